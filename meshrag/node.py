"""Composition root: builds the real I/O, starts and stops everything.

This is the only module that creates executors, servers and background tasks.
The HTTP server comes up first (so /health answers at once); models and
storage load in the background and /ready turns 200 when they are in place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web

from meshrag import __version__
from meshrag.api.api_keys import ApiKeyRoutes
from meshrag.api.auth import api_key_middleware
from meshrag.api.errors import error_middleware, metrics_middleware
from meshrag.api.internal import InternalApi
from meshrag.api.latency import LatencyRoutes, latency_middleware
from meshrag.api.limits import RequestLimits
from meshrag.api.mesh_embed import EmbedRoute
from meshrag.api.mesh_generate import GenerateRoute
from meshrag.api.openai_compat import OpenAICompatApi
from meshrag.api.public import PublicApi
from meshrag.api.snapshots import SnapshotRoutes
from meshrag.backup.snapshot import SnapshotSources
from meshrag.api.status_page import StatusPage
from meshrag.clock import HybridLogicalClock, SystemClock
from meshrag.cluster.joining import check_cluster_without_storage, join_ring
from meshrag.cluster.ringstate import ClusterSettings, RingState
from meshrag.cluster.rpc import BodyCodec, PeerClient
from meshrag.cluster.service import ClusterService
from meshrag.config import Config, as_dict, parse_host_port
from meshrag.cluster.breaker import BreakerBoard, BreakerSettings
from meshrag.embedding.base import EmbedderInfo
from meshrag.embedding.local import LocalEmbedding, RateMeter
from meshrag.embedding.remote import RemoteEmbedders
from meshrag.embedding.router import EmbedRouter, EmbedRouterSettings
from meshrag.embedding.service import EmbeddingService
from meshrag.generation.admission import Admission, LocalGenerator
from meshrag.generation.backends import build_backend
from meshrag.generation.remote import RemoteGenerators
from meshrag.generation.router import GeneratorRouter, RouterSettings
from meshrag.generation.service import GenerationService
from meshrag.gossip import AsyncioTransport, GossipDatagramProtocol, MemberEvent, Memberlist
from meshrag.gossip import PUSH_PULL_PATH
from meshrag.gossip.events import EventKind
from meshrag.gossip.state import MemberState
from meshrag.gossip.known_peers import KnownPeers
from meshrag.datadir import DataDirLock, lock_for_node
from meshrag.identity import NodeIdentity, load_or_create
from meshrag.latency_history import LatencyHistory
from meshrag.observability import (
    ClusterCollector, GossipCollector, LoopLagMonitor, Metrics, SecurityCollector, StorageSnapshot, configure_logging, start_monitor,
)
from meshrag.rag.chunking import Chunker, ChunkingSettings
from meshrag.rag.embedder import Embedder, default_model_path
from meshrag.rag.pipeline import RagPipeline
from meshrag.errors import ConfigError, NotServedHere, Unavailable
from meshrag.faults import ForgetfulClock, InjectedFaults
from meshrag.security.api_keys import ApiKeyStore, write_bootstrap_key
from meshrag.security.tls import TlsFiles, client_context, server_context
from meshrag.storage_upkeep import StorageUpkeep
from meshrag.security import mesh_auth
from meshrag.security.keyring import KEYRING_FILE_NAME, Keyring
from meshrag.security.mesh_auth import RpcAuth
from meshrag.security.rotation import KeyRotation, keyring_saver
from meshrag.security.secret import node_keyring
from meshrag.store.analysis import Analyzer
from meshrag.store.engine import StorageEngine
from meshrag.store.hints import HintStore

log = logging.getLogger(__name__)


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.pipeline: RagPipeline | None = None
        self.identity: NodeIdentity | None = None
        self.members: Memberlist | None = None
        self.cluster: ClusterService | None = None
        self._hints: HintStore | None = None
        self._peers: PeerClient | None = None
        self._keyring: Keyring | None = None  # None in dev mode: nothing signed (security/)
        self._rpc_auth: RpcAuth | None = None
        self._http_session: aiohttp.ClientSession | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._clock = SystemClock(config.node.clock_offset_s)
        self.latency = LatencyHistory(self._clock.now)  # the status page's chart (api/latency.py feeds it)
        self._faults = InjectedFaults.from_env(os.environ, config.node.dev)  # tests of the chaos checker only
        self.api_keys = ApiKeyStore(config.data_path)  # the cluster's API keys (api/auth.py checks them)
        self._tls = TlsFiles.from_config(config.node.tls_cert, config.node.tls_key, config.node.tls_ca)
        clock_type = ForgetfulClock if self._faults.stamp_without_observing else HybridLogicalClock
        self._hlc = clock_type(self._clock, config.cluster.max_clock_drift_s)
        self._started_at = time.time()
        self._storage_pool = ThreadPoolExecutor(config.storage.threads, thread_name_prefix="storage")
        # Small CPU and file steps kept off the event loop (gossip shares it): packing and
        # unpacking large /_mesh/ bodies, writing cluster.json. Its own thread, so they never
        # queue behind a long SQLite write in the storage pool.
        self._offload_pool = ThreadPoolExecutor(1, thread_name_prefix="offload")
        # One thread each for the models (threads start at first use, so a node without the
        # generator role never starts its thread): embedding batches never queue behind
        # SQLite nor SQLite behind them, and llama.cpp, whose context is not thread-safe,
        # runs every generation on the one thread it owns.
        self._embed_pool = ThreadPoolExecutor(1, thread_name_prefix="embedder")
        self._generation_pool = ThreadPoolExecutor(1, thread_name_prefix="llama")
        self._codec = BodyCodec(self._offload_pool)
        self._storage_snapshot = StorageSnapshot()
        self._engine: StorageEngine | None = None
        self._embedder: Embedder | None = None
        self._embed_rate = RateMeter()  # texts/s of this node's embedding batches, advertised
        self.local_embedding: LocalEmbedding | None = None  # parts coordinators send here (ours too)
        self.embedding: EmbeddingService | None = None  # an ingest's texts split over the cluster's embedders
        self.local_generator: LocalGenerator | None = None  # this node's own, with the generator role
        self.generation: GenerationService | None = None  # routing to every generator in the cluster
        self.stores_data = "storage" in config.node.roles  # without it: no partitions, not in the ring
        self._components = {"storage": False, "embedder": False} if self.stores_data else {"embedder": False}
        if "generator" in config.node.roles:
            self._components["generator"] = False
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._monitor: Any = None
        self._known_peers: KnownPeers | None = None  # set when gossip starts
        self._stopped = asyncio.Event()
        self._data_lock: DataDirLock | None = None  # held while this process runs (datadir.py)
        self.startup_error: BaseException | None = None

    # ------------------------------------------------------------ NodeView
    def readiness(self) -> dict[str, bool]:
        return dict(self._components)

    def embedding_dim(self) -> int:
        assert self._embedder is not None
        return self._embedder.dim

    async def cluster_view(self) -> dict[str, Any]:
        identity = self.identity
        node = {
            "name": self.config.node_name,
            "id": identity.node_id if identity else None,
            "address": self.config.advertise_address,
            "zone": self.config.node.zone,
            "roles": self.config.node.roles,
            "generation": identity.generation if identity else None,
            "version": __version__,
            "uptime_s": round(time.time() - self._started_at, 1),
            "ready": all(self._components.values()),
            "components": self.readiness(),
        }
        members = sorted((m.as_dict() for m in self.members.members()), key=lambda m: m["name"]) if self.members else []
        loop = asyncio.get_running_loop()
        storage = await loop.run_in_executor(self._storage_pool, self._engine.stats) if self._engine else None  # SQLite
        return {
            "node": node,
            "members": members,
            "ring": await self._ring_view(),
            "storage": storage,
            "generator": self.local_generator.stats() if self.local_generator else None,
            "generation": self.generation.view() if self.generation else None,
            "embedding": self.embedding.view() if self.embedding else None,
            "embedder": {"model": self._embedder.model_name, "dim": self._embedder.dim} if self._embedder and self._components["embedder"] else None,
            "config": as_dict(self.config),
        }

    def snapshot_sources(self) -> SnapshotSources:
        """What `meshrag snapshot` copies (api/snapshots.py): 421 without storage, 503 while it opens."""
        if not self.stores_data:
            raise NotServedHere("this node holds no data (no storage role); take snapshots of the storage nodes")
        if self._engine is None or self.cluster is None or self.identity is None or self.cluster.ring_state.settings is None:
            raise Unavailable("storage is still opening", retry_after_s=2)
        loop, pool = asyncio.get_running_loop(), self._storage_pool
        return SnapshotSources(self._engine, self.config.data_path, self.identity.node_id, self.config.node_name,
                               self.identity.generation, self.cluster.ring_state.settings,
                               lambda fn, *args: loop.run_in_executor(pool, fn, *args))

    async def _ring_view(self) -> dict[str, Any]:
        if self.cluster is None:
            return {"partitions": self.config.cluster.partitions, "replicas": self.config.cluster.replicas, "local_partitions": 0}
        admin = self.cluster.admin
        table = await asyncio.get_running_loop().run_in_executor(self._offload_pool, admin.partition_table_job())
        return dict(admin.ring_view(), pending_hints=await admin.hints_view(), partition_table=table)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        configure_logging(self.config.observability.log_level, self.config.observability.log_format, self.config.node_name)
        self._data_lock = lock_for_node(self.config.data_path, self.config.node_name)  # no second node, no restore meanwhile
        self.identity = load_or_create(self.config.data_path, self.config.node_name)
        node = self.config.node
        self._keyring = node_keyring(self.config.data_path, node.secret, node.secret_file, node.dev, self.config.advertise_address)
        if self._keyring is not None:
            self._rpc_auth = RpcAuth(self._keyring, self.identity.node_id, self._clock, self.config.cluster.max_clock_drift_s)
        self.metrics.registry.register(SecurityCollector(lambda: self._rpc_auth))
        lag = LoopLagMonitor(self.metrics.loop_lag.observe)
        self._tasks.append(asyncio.create_task(lag.run(), name="loop-lag"))
        await self._start_http()
        await self._start_gossip()
        if self.config.observability.monitor:
            self._monitor = start_monitor(asyncio.get_running_loop(), self.config.observability.monitor_port)
        self._tasks.append(asyncio.create_task(self._load_components(), name="load-components"))
        log.info("node %s (%s) listening on %s, generation %d", self.config.node_name, self.identity.node_id, self.config.node.bind, self.identity.generation)

    async def _start_http(self) -> None:
        self.api_keys.load()  # a small file, once, before the first request
        if self.config.api.keys and not self.api_keys.live() and not self._seeds():
            path, key = write_bootstrap_key(self.api_keys, self.config.data_path, self.stamp())  # once, at a first start
            log.warning("API keys are on and none existed: admin key %s is in %s (mode 0600); create the others with "
                        "`meshrag apikeys create NAME --scopes ...`, then delete that file", key.id, path)
        app = web.Application(
            middlewares=[metrics_middleware(self.metrics), latency_middleware(self.latency), error_middleware,
                         api_key_middleware(self.api_keys, lambda: self.config.api.keys)],
            # The larger of the two limits; each route checks its own (public: api.max_body_bytes,
            # /_mesh/: cluster.max_message_bytes, since replication carries vectors).
            client_max_size=max(self.config.api.max_body_bytes, self.config.cluster.max_message_bytes),
        )
        RequestLimits(self.config.api, self._clock).install(app)  # per-client concurrency, deadlines
        app.add_routes(PublicApi(self, self._offload_pool).routes())
        app.add_routes(InternalApi(self, self.config.gossip_settings(), self.config.cluster.max_message_bytes, self._codec).routes())
        mesh_auth.install(app, self._rpc_auth, self._codec.digest, exempt=(PUSH_PULL_PATH,))
        if self._keyring is not None:
            app.add_routes(self._key_rotation(self._keyring).routes())
        app.add_routes(GenerateRoute(self).routes())
        app.add_routes(EmbedRoute(self, self._codec).routes())
        app.add_routes(OpenAICompatApi(self, self._offload_pool).routes())
        app.add_routes(ApiKeyRoutes(self).routes())
        app.add_routes(SnapshotRoutes(self).routes())
        app.add_routes(StatusPage().routes())  # GET /: the status page
        app.add_routes(LatencyRoutes(self.latency).routes())
        # handler_cancellation: a client that disconnects cancels its handler,
        # which is how an abandoned /v1/ask stops its generation.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        host, port = parse_host_port(self.config.node.bind)
        tls = server_context(self._tls) if self._tls is not None else None
        await web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=tls).start()

    async def _start_gossip(self) -> None:
        """UDP on the HTTP port number; push-pull rides on HTTP (api/internal.py)."""
        assert self.identity is not None
        loop = asyncio.get_running_loop()
        host, port = parse_host_port(self.config.node.bind)
        protocol = GossipDatagramProtocol(self._on_datagram)
        self._udp, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=_gossip_socket(host, port))
        # With TLS, node-to-node calls go over HTTPS and trust the cluster CA only (security/tls.py).
        connector = aiohttp.TCPConnector(ssl=client_context(self._tls.ca)) if self._tls is not None else None
        self._http_session = aiohttp.ClientSession(connector=connector)
        scheme = "https" if self._tls is not None else "http"
        self._peers = PeerClient(self._http_session, self._rpc_auth, self.config.cluster.replica_timeout_s, self._codec, scheme)
        self.members = Memberlist(
            self.identity,
            self.config.advertise_address,
            transport=AsyncioTransport(loop, protocol, self._http_session, scheme=scheme),
            scheduler=loop,
            clock=self._clock,
            rng=random.Random(),
            settings=self.config.gossip_settings(),
            secret=self._keyring or "",
            metadata=self._member_metadata(),
            listener=self._on_member_event,
            encrypt=self._keyring is not None and self.config.node.gossip_encryption,
            replay_window_s=self.config.cluster.max_clock_drift_s if self._keyring is not None else None,
        )
        self.metrics.registry.register(GossipCollector(self.members))
        self.generation = self._build_generation()
        self.members.start()
        self._known_peers = KnownPeers(self.config.data_path, self.config.advertise_address)
        # Seeds first, then whom this node saw alive before it stopped: a node restarted
        # without seeds would otherwise come back alone (gossip/known_peers.py).
        seeds = list(dict.fromkeys([*self.config.node.join, *self._known_peers.load()]))
        if seeds:
            self.members.join(seeds)

    def _on_datagram(self, payload: bytes, address: str) -> None:
        if self.members is not None:
            self.members.handle_datagram(payload, address)

    def _on_member_event(self, event: MemberEvent) -> None:
        member = event.member
        log.info("member %s (%s) at %s is %s", member.name, member.node_id[:12], member.address, event.kind.value)
        known = self._known_peers
        if event.kind in (EventKind.JOINED, EventKind.ALIVE) and known is not None and known.remember(member.address):
            try:
                self._offload_pool.submit(known.save)  # a file write: off the loop gossip shares
            except RuntimeError:  # the pool is shut down: the node is stopping
                pass
        if self.cluster is not None:
            self.cluster.loops.on_member_event(event)

    def _member_metadata(self) -> dict[str, Any]:
        """What other nodes need to route to us; rides on alive messages (bounded size)."""
        meta: dict[str, Any] = {"roles": self.config.node.roles, "zone": self.config.node.zone, "http": self.config.advertise_address}
        if self._embedder is not None and self._components["embedder"]:
            meta["embedder"] = self._embedder.model_name
        if self.local_embedding is not None:
            meta["embedding"] = self.local_embedding.metadata()
        if self.local_generator is not None:
            meta["generator"] = self.local_generator.metadata()
        return meta

    async def _advertise_metadata_changes(self) -> None:
        """Gossip our metadata when it changes (models loaded, generator load).

        Every update is broadcast to the whole cluster, so changes are
        coalesced: at most one every METADATA_REFRESH_S.
        """
        advertised: dict[str, Any] | None = None
        while self.members is not None:
            current = self._member_metadata()
            if current != advertised:
                self.members.update_metadata(current)
                advertised = current
            await asyncio.sleep(METADATA_REFRESH_S)

    async def _load_components(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            embedder = Embedder(
                self.config.embedder.model or default_model_path(),
                threads=self.config.embedder.threads,
                max_batch=self.config.embedder.max_batch,
                max_wait_ms=self.config.embedder.max_wait_ms,
                device=self.config.embedder.device,
                on_batch=self._record_embed_batch,
                executor=self._embed_pool,
                backend=self.config.embedder.backend,
                gpu_memory_utilization=self.config.embedder.gpu_memory_utilization,
            )
            await loop.run_in_executor(None, embedder.load)
            await embedder.start()
            self._embedder = embedder
            self.local_embedding = LocalEmbedding(embedder, self.config.embedder.queue_limit, self._embed_rate)
            self.embedding = self._build_embedding(self.local_embedding)
            self._components["embedder"] = True
            if self.stores_data:
                await self._start_storage(embedder)
            else:
                await self._check_cluster_settings(embedder)
            if "generator" in self._components:
                self.local_generator = await loop.run_in_executor(None, self._load_generator)
                self._components["generator"] = True
            if self.cluster is not None:
                self.pipeline = self._build_pipeline(embedder)
            self._tasks.append(asyncio.create_task(self._advertise_metadata_changes(), name="metadata"))
            log.info("node ready: %s", self.readiness())
        except Exception as exc:  # a node that cannot load must say why and stop
            log.exception("node failed to load its components")
            self.startup_error = exc
            self._stopped.set()

    async def _start_storage(self, embedder: Embedder) -> None:
        """Join the ring (or create the cluster), open the partitions and hints, start the cluster service."""
        loop = asyncio.get_running_loop()
        analyzer = self._analyzer()
        ring_state = await self._cluster_membership(embedder.model_name, embedder.dim, analyzer.fingerprint())
        assert ring_state.settings is not None
        self._engine = await loop.run_in_executor(
            self._storage_pool, self._open_engine, ring_state.settings.partitions, embedder.dim, analyzer,
        )
        self._hints = HintStore(self.config.data_path / "hints.sqlite", self.config.cluster.max_hint_bytes, self._clock.wall)
        await loop.run_in_executor(self._storage_pool, self._hints.open)
        self.cluster = self._build_cluster(ring_state)
        self.metrics.registry.register(ClusterCollector(self.cluster, self._storage_snapshot))
        self.cluster.loops.start()
        self._components["storage"] = True
        upkeep = StorageUpkeep(engine=self._engine, hints=self._hints, pool=self._storage_pool, config=self.config,
                               clock=self._clock, metrics=self.metrics, snapshot=self._storage_snapshot,
                               is_ready=lambda: all(self._components.values()))
        await upkeep.refresh_metrics()
        for work, name in ((upkeep.save_indexes_forever, "index-saver"), (upkeep.purge_tombstones_forever, "tombstone-purge"),
                           (upkeep.refresh_metrics_forever, "storage-metrics")):
            self._tasks.append(asyncio.create_task(work(), name=name))

    async def _check_cluster_settings(self, embedder: Embedder) -> None:
        assert self._peers is not None
        settings = await check_cluster_without_storage(self._peers, self._seeds(), embedder.model_name, embedder.dim)
        log.info("serving cluster %s without storage (roles %s)", settings, ",".join(self.config.node.roles))

    def _record_embed_part(self, target: EmbedderInfo, outcome: str) -> None:
        self.metrics.embed_parts.labels(where="local" if target.local else "remote", outcome=outcome).inc()

    def _record_embed_batch(self, texts: int, seconds: float) -> None:
        self._embed_rate.observe(texts, seconds)
        self.metrics.embed_batches.inc()
        self.metrics.embed_batch_size.observe(texts)

    def _analyzer(self) -> Analyzer:
        try:
            return Analyzer(language=self.config.search.stemmer, stopwords=self.config.search.stopwords)
        except ValueError as exc:
            raise ConfigError(f"search.stemmer / search.stopwords: {exc}", field="search.stemmer") from None

    async def _cluster_membership(self, model: str, dim: int, analysis: str) -> RingState:
        """Create the cluster, or adopt the one the seeds belong to (cluster/joining.py), and put
        this node in its ring."""
        assert self.identity is not None and self._peers is not None
        loop = asyncio.get_running_loop()
        ring_state = RingState(self.config.data_path, self.identity.node_id, lambda fn: loop.run_in_executor(self._offload_pool, fn))
        new_cluster = ClusterSettings(self.config.cluster.partitions, self.config.cluster.replicas, model, dim, analysis)
        await join_ring(ring_state, peers=self._peers, seeds=self._seeds(), new_cluster=new_cluster,
                        name=self.config.node_name, zone=self.config.node.zone, now=self._hlc.now)
        return ring_state

    # ------------------------------------------------------------ API keys (api/api_keys.py)
    def stamp(self) -> int:
        return self._hlc.now()

    async def api_keys_changed(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._offload_pool, self.api_keys.save)
        if self.cluster is not None:
            self.cluster.loops.spread_now()

    def _key_rotation(self, keyring: Keyring) -> KeyRotation:
        """/_mesh/keys: `meshrag keys ...` applied here and fanned out to the alive others."""
        def others() -> list[tuple[str, str]]:
            members = self.members.members() if self.members is not None else []
            return [(m.name, m.address) for m in members if m.state == MemberState.ALIVE and m.node_id != (self.identity and self.identity.node_id)]

        async def call(address: str, path: str, body: dict[str, Any]) -> Any:
            assert self._peers is not None
            return await self._peers.call(address, path, body)

        loop = asyncio.get_running_loop()
        save = keyring_saver(keyring, self.config.data_path / KEYRING_FILE_NAME, lambda fn: loop.run_in_executor(self._offload_pool, fn))
        return KeyRotation(keyring, self.config.node_name, others, call, save)

    def _seeds(self) -> list[str]:
        return [s for s in self.config.node.join if s != self.config.advertise_address]

    def _build_cluster(self, ring_state: RingState) -> ClusterService:
        assert self.identity and self._engine and self._hints and self.members and self._peers
        return ClusterService(
            node_id=self.identity.node_id, settings=self.config.cluster, ring_state=ring_state, engine=self._engine,
            hints=self._hints, members=self.members, peers=self._peers, hlc=self._hlc, executor=self._storage_pool,
            search=self.config.search, analyzer=self._engine.analyzer, faults=self._faults, api_keys=self.api_keys,
        )

    def _open_engine(self, partitions: int, dim: int, analyzer: Analyzer) -> StorageEngine:
        settings = self.config.storage.index_settings()
        engine = StorageEngine(self.config.data_path / "partitions", partitions, dim, settings, analyzer=analyzer)
        engine.open()
        return engine

    def _load_generator(self) -> LocalGenerator:
        """This node's backend, loaded (blocking), behind its admission queue."""
        generation = self.config.generation
        backend = build_backend(generation, self.config.data_path, self._generation_pool)
        backend.load()
        capacity = max(generation.queue_size, backend.parallel)
        return LocalGenerator(backend, Admission(capacity, backend.parallel, self._clock))

    def _build_generation(self) -> GenerationService:
        """Routing of answers to the cluster's generators (this node's own included)."""
        assert self.identity is not None and self.members is not None and self._peers is not None
        generation = self.config.generation
        breakers = BreakerBoard(
            BreakerSettings(consecutive_failures=generation.breaker_failures, open_s=generation.breaker_open_s,
                            max_open_s=max(30.0, generation.breaker_open_s)),
            self._clock,
        )
        settings = RouterSettings(
            max_attempts=generation.max_attempts, max_failovers=generation.max_failovers,
            first_piece_timeout_s=generation.first_token_timeout_s, stall_timeout_s=generation.stall_timeout_s,
        )
        members = self.members
        return GenerationService(
            local_id=self.identity.node_id,
            members=members.members,
            local=lambda: self.local_generator,
            remote=RemoteGenerators(self._peers),
            router_factory=lambda open_stream: GeneratorRouter(breakers, random.Random(), open_stream, settings),
            metrics=self.metrics,
        )

    def _build_embedding(self, local: LocalEmbedding) -> EmbeddingService:
        """Routing of an ingest's texts to the cluster's embedders (this node's own included)."""
        assert self.identity is not None and self.members is not None and self._peers is not None
        cfg = self.config.embedder
        breakers = BreakerBoard(
            BreakerSettings(consecutive_failures=cfg.breaker_failures, open_s=cfg.breaker_open_s, max_open_s=max(30.0, cfg.breaker_open_s)),
            self._clock,
        )
        settings = EmbedRouterSettings(
            part_texts=cfg.part_texts, window_s=cfg.window_s, max_attempts=cfg.max_attempts,
            part_timeout_s=cfg.part_timeout_s, busy_wait_s=cfg.busy_wait_s,
        )
        return EmbeddingService(
            local_id=self.identity.node_id,
            members=self.members.members,
            local=local,
            remote=RemoteEmbedders(self._peers),
            router_factory=lambda send: EmbedRouter(breakers, self._clock, send, settings, on_outcome=self._record_embed_part),
            distribute=cfg.distribute,
        )

    def _build_pipeline(self, embedder: Embedder) -> RagPipeline:
        assert self.cluster is not None and self.embedding is not None
        chunking = ChunkingSettings(max_tokens=self.config.chunking.max_tokens, overlap_tokens=self.config.chunking.overlap_tokens)
        return RagPipeline(
            cluster=self.cluster,
            embedder=embedder,
            embedding=self.embedding,
            chunker=Chunker(chunking, embedder.token_offsets, window=embedder.max_seq_tokens),
            hlc=self._hlc,
            executor=self._storage_pool,
            metrics=self.metrics,
            generation=self.generation,
            search_timeout_s=self.config.search.timeout_ms / 1000,
        )

    async def _leave_cluster(self) -> None:
        """Announce a graceful leave so others show this node as left, not dead."""
        if self.members is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def left() -> None:
            if not done.done():
                done.set_result(None)

        self.members.leave(left)
        await done
        self.members.stop()

    async def stop(self) -> None:
        """Graceful stop: leave the cluster, no new requests, background work ended, indexes saved."""
        await self._leave_cluster()
        if self.cluster is not None:
            await self.cluster.loops.stop()  # its loops, ring pushes and read repairs
            await self.cluster.writer.drain()  # replication still running after a write was answered
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.cluster is not None:  # no request can change the ring any more
            await self.cluster.ring_state.flush()  # a restart finds the latest ring
        if self._udp is not None:
            self._udp.close()
        if self._http_session is not None:
            await self._http_session.close()
        if self.local_generator is not None:
            await self.local_generator.backend.close()
        if self._embedder is not None:
            await self._embedder.close()
        if self._engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._storage_pool, self._engine.close)
        if self._hints is not None:
            self._hints.close()
        for pool in (self._storage_pool, self._offload_pool, self._embed_pool, self._generation_pool):
            pool.shutdown(wait=True)  # idle by now (the models' close() waited for their threads)
        if self._monitor is not None:
            self._monitor.close()
        if self._data_lock is not None:
            self._data_lock.release()
        log.info("node stopped")

    async def run_until_signalled(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        await self.start()
        await self._stopped.wait()
        await self.stop()
        return 1 if self.startup_error else 0


METADATA_REFRESH_S = 5.0

# A burst of datagrams (a join storm, a flood of garbage) must wait in the
# kernel rather than be dropped while the loop is busy; the kernel caps this
# at net.core.rmem_max.
GOSSIP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _gossip_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, GOSSIP_RECEIVE_BUFFER)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def run_node(config: Config) -> int:
    """Run a node on uvloop until SIGTERM/SIGINT; the exit status of `meshrag start`."""
    import uvloop

    return uvloop.run(Node(config).run_until_signalled())
