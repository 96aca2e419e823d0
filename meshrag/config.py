"""Typed configuration: defaults < config file < MESHRAG_* environment < flags.

Every key lives in a section dataclass below with its default and a check.
conf/meshrag.toml documents every key with the same default (a test keeps the
two in step). A bad value fails at start with the key, the value, where it came
from and what is allowed, never later at request time.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from meshrag.errors import ConfigError
from meshrag.gossip.settings import GossipSettings
from meshrag.store.vector_index import IndexSettings

ENV_PREFIX = "MESHRAG_"
# Upper bound of a replicated document's bytes per character of its text: UTF-8 (up to 4),
# chunk texts with overlap (x1.2 more), vectors (4 bytes x 384 dims per ~800 characters).
MESSAGE_BYTES_PER_TEXT_CHAR = 20
# MESHRAG_* variables that are not settings, though MESHRAG_NODE looks like the start of
# one: read by cli.py (NODE, the default --node URL), setup_check.py (DATA_DIR),
# scripts/setup.sh (EXTRAS, VENV), scripts/demo.sh (DEMO_PORT, DEMO_DATA) and
# load_config (CONFIG). Any other MESHRAG_<SECTION>_... of a known section must name a setting.
ENV_NOT_SETTINGS = frozenset({
    "MESHRAG_CONFIG", "MESHRAG_NODE", "MESHRAG_DATA_DIR", "MESHRAG_EXTRAS", "MESHRAG_VENV",
    "MESHRAG_DEMO_PORT", "MESHRAG_DEMO_DATA",
})
DEFAULT_CONFIG_PATH = Path("conf/meshrag.toml")
# "embedder": serve /_mesh/embed without storage (a GPU host); a storage node embeds for the
# cluster anyway, since it loads the model for its own ingests and searches.
ROLES = ("storage", "coordinator", "generator", "embedder")
DEFAULT_ROLES = ("storage", "coordinator", "generator")
# In-process llama.cpp (CPU default), in-process vLLM (the gpu extra), any OpenAI-compatible URL.
BACKENDS = ("llama.cpp", "vllm", "openai")
OPENAI_APIS = ("completions", "chat")
EMBED_BACKENDS = ("sentence-transformers", "vllm")


def _check(predicate: Callable[[Any], bool], allowed: str) -> dict[str, Any]:
    return {"check": predicate, "allowed": allowed}


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def parse_host_port(value: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:7070"); raises ValueError on bad input."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1..65535")
    return host.strip("[]"), port


def _is_host_port(value: str) -> bool:
    try:
        parse_host_port(value)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class NodeConfig:
    name: str = field(default="", metadata=_check(lambda v: len(v) <= 64, "a name of at most 64 characters ('' = hostname)"))
    bind: str = field(default="127.0.0.1:7070", metadata=_check(_is_host_port, "HOST:PORT"))
    advertise: str = field(default="", metadata=_check(lambda v: v == "" or _is_host_port(v), "HOST:PORT or '' (= bind)"))
    join: list[str] = field(default_factory=list, metadata=_check(lambda v: all(_is_host_port(s) for s in v), "a list of HOST:PORT"))
    data_dir: str = field(default="./meshrag-data", metadata=_check(bool, "a directory path"))
    roles: list[str] = field(default_factory=lambda: list(DEFAULT_ROLES), metadata=_check(lambda v: bool(v) and set(v) <= set(ROLES), f"a non-empty subset of {', '.join(ROLES)}"))
    zone: str = field(default="default", metadata=_check(bool, "a non-empty zone name"))
    secret: str = field(default="", metadata=_check(lambda v: v == "" or len(v) >= 16, "'' or a shared secret of at least 16 characters"))
    # A file holding the cluster secret (--secret-file); with neither it nor secret, and not
    # --dev, the node creates data_dir/cluster.secret (0600) and prints how others join with it.
    secret_file: str = ""
    # HTTPS for the listener (public API and /_mesh/), and node-to-node calls that trust only
    # tls_ca, the cluster's CA (security/tls.py); all three or none.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    dev: bool = False  # no authentication at all: loopback binds only
    gossip_encryption: bool = True  # AES-GCM gossip packets (authenticated either way); not in --dev
    # For testing only: shifts this node's wall clock (versions, tombstone purge, gossip
    # timestamps) by this many seconds, to reproduce clock skew between nodes.
    clock_offset_s: float = field(default=0.0, metadata=_check(lambda v: abs(v) <= 86400 * 365, "seconds, |offset| <= one year (testing only)"))


@dataclass
class ClusterConfig:
    partitions: int = field(default=64, metadata=_check(lambda v: 1 <= v <= 4096, "an integer 1..4096"))
    replicas: int = field(default=3, metadata=_check(lambda v: 1 <= v <= 7, "an integer 1..7"))
    replica_timeout_s: float = field(default=5.0, metadata=_check(_positive, "seconds > 0"))
    hint_replay_interval_s: float = field(default=2.0, metadata=_check(_positive, "seconds > 0"))
    ring_sync_interval_s: float = field(default=1.0, metadata=_check(_positive, "seconds > 0"))
    repair_interval_s: float = field(default=60.0, metadata=_check(_positive, "seconds > 0"))
    repair_max_bytes_per_s: float = field(default=64 * 1024 * 1024, metadata=_check(_non_negative, "bytes/s >= 0 (0 = unlimited)"))
    auto_remove_after_s: float = field(default=0.0, metadata=_check(_non_negative, "seconds >= 0 (0 = never)"))
    max_clock_drift_s: float = field(default=60.0, metadata=_check(_positive, "seconds > 0"))
    max_hint_window_s: float = field(default=3 * 3600.0, metadata=_check(_non_negative, "seconds >= 0 (0 = no hints)"))
    max_hint_bytes: int = field(default=256 * 1024 * 1024, metadata=_check(_non_negative, "bytes >= 0 per target node"))
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata=_check(lambda v: v >= 1024 * 1024, "bytes >= 1 MiB"))


@dataclass
class StorageConfig:
    index_connectivity: int = field(default=16, metadata=_check(lambda v: 4 <= v <= 128, "an integer 4..128"))
    index_expansion_add: int = field(default=128, metadata=_check(lambda v: 8 <= v <= 4096, "an integer 8..4096"))
    index_expansion_search: int = field(default=192, metadata=_check(lambda v: 8 <= v <= 4096, "an integer 8..4096"))
    index_expansion_per_result: int = field(default=4, metadata=_check(lambda v: 1 <= v <= 64, "an integer 1..64"))
    index_exhaustive_below: int = field(default=8192, metadata=_check(lambda v: 0 <= v <= 1_000_000, "an integer 0..1000000"))
    index_save_interval_s: float = field(default=30.0, metadata=_check(_positive, "seconds > 0"))
    tombstone_grace_s: float = field(default=864000.0, metadata=_check(_positive, "seconds > 0"))
    threads: int = field(default=2, metadata=_check(lambda v: 1 <= v <= 64, "an integer 1..64"))

    def index_settings(self) -> IndexSettings:
        """The vector index's settings these keys configure (store/vector_index.py)."""
        return IndexSettings(
            connectivity=self.index_connectivity, expansion_add=self.index_expansion_add,
            expansion_search=self.index_expansion_search, expansion_per_result=self.index_expansion_per_result,
            exhaustive_below=self.index_exhaustive_below,
        )


@dataclass
class ChunkingConfig:
    # 0: the embedding model's window (rag/chunking.py MODEL_WINDOW, resolved when the model loads).
    max_tokens: int = field(default=0, metadata=_check(lambda v: v == 0 or 16 <= v <= 8192, "0 (the model's window) or an integer 16..8192"))
    overlap_tokens: int = field(default=40, metadata=_check(_non_negative, "an integer >= 0 and < max_tokens"))


@dataclass
class EmbedderConfig:
    model: str = field(default="", metadata=_check(lambda v: True, "'' (bundled all-MiniLM-L6-v2) or a local sentence-transformers path"))
    threads: int = field(default=1, metadata=_check(lambda v: 1 <= v <= 256, "an integer 1..256"))
    max_batch: int = field(default=64, metadata=_check(lambda v: 1 <= v <= 4096, "an integer 1..4096"))
    max_wait_ms: float = field(default=0.0, metadata=_check(lambda v: 0 <= v <= 1000, "milliseconds 0..1000"))
    device: str = field(default="cpu", metadata=_check(bool, "a torch device such as cpu or cuda"))
    backend: str = field(default="sentence-transformers", metadata=_check(lambda v: v in EMBED_BACKENDS, " | ".join(EMBED_BACKENDS)))
    distribute: bool = field(default=True, metadata=_check(lambda v: isinstance(v, bool), "true or false"))
    part_texts: int = field(default=32, metadata=_check(lambda v: 1 <= v <= 4096, "an integer 1..4096"))
    queue_limit: int = field(default=1024, metadata=_check(lambda v: 1 <= v <= 1_000_000, "an integer 1..1000000 (texts)"))
    window_s: float = field(default=2.0, metadata=_check(_positive, "seconds > 0"))
    part_timeout_s: float = field(default=60.0, metadata=_check(_positive, "seconds > 0"))
    busy_wait_s: float = field(default=30.0, metadata=_check(_positive, "seconds > 0"))
    max_attempts: int = field(default=3, metadata=_check(lambda v: 1 <= v <= 16, "an integer 1..16"))
    breaker_failures: int = field(default=2, metadata=_check(lambda v: 1 <= v <= 100, "an integer 1..100"))
    breaker_open_s: float = field(default=2.0, metadata=_check(_positive, "seconds > 0"))
    gpu_memory_utilization: float = field(default=0.3, metadata=_check(lambda v: 0 < v <= 1, "a share 0..1"))


@dataclass
class GenerationConfig:
    backend: str = field(default="llama.cpp", metadata=_check(lambda v: v in BACKENDS, " | ".join(BACKENDS)))
    model: str = field(default="", metadata=_check(lambda v: True, "'' (bundled gemma-3-270m GGUF) or a model path"))
    threads: int = field(default=1, metadata=_check(lambda v: 1 <= v <= 256, "an integer 1..256"))
    context_tokens: int = field(default=4096, metadata=_check(lambda v: 256 <= v <= 131072, "an integer 256..131072"))
    max_tokens: int = field(default=256, metadata=_check(lambda v: 1 <= v <= 8192, "an integer 1..8192"))
    temperature: float = field(default=0.0, metadata=_check(lambda v: 0 <= v <= 2, "a number 0..2"))
    queue_size: int = field(default=8, metadata=_check(lambda v: 1 <= v <= 10000, "an integer 1..10000"))
    stall_timeout_s: float = field(default=30.0, metadata=_check(_positive, "seconds > 0"))
    first_token_timeout_s: float = field(default=120.0, metadata=_check(_positive, "seconds > 0"))
    max_attempts: int = field(default=3, metadata=_check(lambda v: 1 <= v <= 16, "an integer 1..16"))
    max_failovers: int = field(default=2, metadata=_check(lambda v: 0 <= v <= 16, "an integer 0..16"))
    breaker_failures: int = field(default=2, metadata=_check(lambda v: 1 <= v <= 100, "an integer 1..100"))
    breaker_open_s: float = field(default=2.0, metadata=_check(_positive, "seconds > 0"))
    parallel: int = field(default=16, metadata=_check(lambda v: 1 <= v <= 4096, "an integer 1..4096"))
    openai_base_url: str = field(default="", metadata=_check(lambda v: v == "" or v.startswith(("http://", "https://")), "'' or an http(s):// URL"))
    openai_model: str = field(default="", metadata=_check(lambda v: True, "the model name the server expects"))
    openai_api_key_env: str = field(default="OPENAI_API_KEY", metadata=_check(lambda v: True, "an environment variable name"))
    openai_api: str = field(default="completions", metadata=_check(lambda v: v in OPENAI_APIS, " | ".join(OPENAI_APIS)))
    gpu_memory_utilization: float = field(default=0.85, metadata=_check(lambda v: 0 < v <= 1, "a share 0..1"))


@dataclass
class ApiConfig:
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata=_check(lambda v: v >= 1024, "bytes >= 1024"))
    max_documents_per_request: int = field(default=512, metadata=_check(lambda v: 1 <= v <= 100000, "an integer 1..100000"))
    max_text_chars: int = field(default=1_000_000, metadata=_check(_positive, "an integer > 0"))
    max_k: int = field(default=1000, metadata=_check(lambda v: 1 <= v <= 100000, "an integer 1..100000"))
    default_k: int = field(default=10, metadata=_check(_positive, "an integer > 0"))
    ask_default_k: int = field(default=3, metadata=_check(_positive, "an integer > 0"))
    # Requests one client (its API key when one authenticated it, else its address) may have
    # in flight at once on this node; beyond it 429 with Retry-After, nothing started (api/limits.py).
    max_concurrent_per_client: int = field(default=64, metadata=_check(_non_negative, "an integer >= 0 (0 = no limit)"))
    # Server-side deadlines per route class (api/limits.py), 504 deadline_exceeded beyond them.
    # Reads stay above the longest search timeout_ms (60 s) so that a search's own deadline answers
    # first; generation is bounded to an answer's first byte (a started stream is bounded by
    # generation.stall_timeout_s and max_tokens); a write stopped by its deadline may be partly done.
    read_deadline_s: float = field(default=90.0, metadata=_check(_positive, "seconds > 0"))
    write_deadline_s: float = field(default=300.0, metadata=_check(_positive, "seconds > 0"))
    generate_deadline_s: float = field(default=300.0, metadata=_check(_positive, "seconds > 0"))
    # Require an API key (Authorization: Bearer) on every public route but /health and /ready;
    # keys and their scopes: `meshrag apikeys`. Not with --dev, which authenticates nobody.
    keys: bool = False


@dataclass
class SearchConfig:
    # The whole search's deadline (phases, hedges, fail-over); a request may ask for less or more.
    timeout_ms: float = field(default=2000.0, metadata=_check(lambda v: 10 <= v <= 60000, "milliseconds 10..60000"))
    # A node that has not answered after its recent p95 latency (clamped to these bounds)
    # is asked again through the next replica of its partitions.
    hedge_floor_ms: float = field(default=20.0, metadata=_check(_positive, "milliseconds > 0"))
    hedge_cap_ms: float = field(default=1000.0, metadata=_check(_positive, "milliseconds > 0"))
    hedge_max_ratio: float = field(default=0.05, metadata=_check(lambda v: 0 <= v <= 1, "a share 0..1 of requests"))
    # Per-peer circuit breaker: opens after this many consecutive failures (or half the
    # calls failing), stays open open_s then doubles on each failed probe up to max_open_s.
    breaker_failures: int = field(default=5, metadata=_check(lambda v: 1 <= v <= 1000, "an integer 1..1000"))
    breaker_open_s: float = field(default=1.0, metadata=_check(_positive, "seconds > 0"))
    breaker_max_open_s: float = field(default=30.0, metadata=_check(_positive, "seconds > 0"))
    # How long the coordinator reuses cluster-wide BM25 term statistics (the DFS pre-pass).
    bm25_stats_ttl_s: float = field(default=30.0, metadata=_check(_non_negative, "seconds >= 0 (0 = a pre-pass for every query)"))
    # A one-kind search of at most 16 results that asks at most this many other nodes has them
    # send the text of their best candidates along (one round trip instead of two; 0 = always two).
    inline_text_max_nodes: int = field(default=2, metadata=_check(lambda v: 0 <= v <= 64, "an integer 0..64"))
    # Text analysis for BM25, fixed when the cluster is created (a node with other settings
    # is refused on join): a Snowball stemmer language or "none", and a stop word list or "none".
    stemmer: str = field(default="english", metadata=_check(bool, "a Snowball language (english, german, ...) or none"))
    stopwords: str = field(default="english", metadata=_check(lambda v: v in ("english", "none"), "english | none"))


@dataclass
class ObservabilityConfig:
    log_level: str = field(default="info", metadata=_check(lambda v: v in ("debug", "info", "warning", "error"), "debug | info | warning | error"))
    log_format: str = field(default="json", metadata=_check(lambda v: v in ("json", "text"), "json | text"))
    monitor: bool = False
    monitor_port: int = field(default=20101, metadata=_check(lambda v: 1 <= v <= 65532, "a port 1..65532 (uses it and the next two)"))


def _mirror(settings_cls: type) -> type:
    """A mutable config section with the same keys, types and defaults as a frozen settings class.

    The settings class (gossip/settings.py) stays the one definition of the
    protocol's knobs and checks them in its __post_init__; _validate builds it.
    """
    fields = [(f.name, f.type, field(default=f.default)) for f in dataclasses.fields(settings_cls)]
    return dataclasses.make_dataclass(settings_cls.__name__.replace("Settings", "Config"), fields)


GossipConfig = _mirror(GossipSettings)


@dataclass
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    gossip: Any = field(default_factory=GossipConfig)

    @property
    def node_name(self) -> str:
        return self.node.name or socket.gethostname()

    @property
    def advertise_address(self) -> str:
        return self.node.advertise or self.node.bind

    @property
    def data_path(self) -> Path:
        return Path(self.node.data_dir)

    def gossip_settings(self) -> GossipSettings:
        return GossipSettings(**dataclasses.asdict(self.gossip))


def sections(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _coerce(raw: Any, target: Any, from_text: bool) -> Any:
    """Turn a file/env/flag value into the field's type, or raise ValueError."""
    if target is bool:
        if isinstance(raw, bool):
            return raw
        if from_text and str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if from_text and str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if target is int:
        if isinstance(raw, bool) or not (isinstance(raw, int) or from_text):
            raise ValueError("expected an integer")
        return int(str(raw).strip())
    if target is float:
        if isinstance(raw, bool) or not (isinstance(raw, (int, float)) or from_text):
            raise ValueError("expected a number")
        return float(str(raw).strip()) if from_text else float(raw)
    if target is str:
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw
    # list[str]: comma-separated in env/flags, an array in files.
    if isinstance(raw, str) and from_text:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return list(raw)
    raise ValueError("expected a list of strings")


def _field_type(section_cls: type, name: str) -> Any:
    annotation = {f.name: f.type for f in dataclasses.fields(section_cls)}[name]
    # Annotations are strings here (from __future__ import annotations).
    return {"str": str, "int": int, "float": float, "bool": bool}.get(str(annotation), list)


def _known_keys(config: Config) -> list[str]:
    return [f"{name}.{f.name}" for name, section in sections(config).items() for f in dataclasses.fields(section)]


def _closest(name: str, candidates: list[str]) -> str:
    """The candidate most like ``name``, however unlike: an error should always point somewhere."""
    return difflib.get_close_matches(name, candidates, n=1, cutoff=0.0)[0]


def _env_name(key: str) -> str:
    return f"{ENV_PREFIX}{key.replace('.', '_')}".upper()


def _set_value(config: Config, key: str, raw: Any, source: str, from_text: bool) -> None:
    section_name, _, name = key.partition(".")
    section = sections(config).get(section_name)
    known = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
    if name not in known:
        suggestion = _closest(key, _known_keys(config))
        raise ConfigError(f"unknown configuration key {key!r} (from {source}); did you mean {suggestion!r}?", field=key)
    try:
        value = _coerce(raw, _field_type(type(section), name), from_text)
    except ValueError as exc:
        raise ConfigError(f"{key} = {raw!r} (from {source}): {exc}", field=key) from None
    setattr(section, name, value)


def _validate(config: Config, origins: Mapping[str, str]) -> None:
    for section_name, section in sections(config).items():
        for f in dataclasses.fields(section):
            check = f.metadata.get("check")
            value = getattr(section, f.name)
            if check is not None and not check(value):
                key = f"{section_name}.{f.name}"
                origin = origins.get(key, "default")
                raise ConfigError(f"{key} = {value!r} (from {origin}): allowed is {f.metadata['allowed']}", field=key)
    _validate_relations(config)
    config.gossip_settings()  # raises ConfigError naming the gossip.* key


def _validate_relations(config: Config) -> None:
    one_document = MESSAGE_BYTES_PER_TEXT_CHAR * config.api.max_text_chars
    if config.cluster.max_message_bytes < one_document:
        # Batches are split to fit a message, but one document cannot be split.
        raise ConfigError(
            f"cluster.max_message_bytes = {config.cluster.max_message_bytes}: must hold one document of "
            f"api.max_text_chars = {config.api.max_text_chars} with its chunks and vectors "
            f"(at least {one_document} bytes)", field="cluster.max_message_bytes",
        )
    hint_window = config.cluster.max_hint_window_s
    if config.storage.tombstone_grace_s <= hint_window:
        # A hint older than the grace period could carry a write the tombstone must beat.
        raise ConfigError(
            f"storage.tombstone_grace_s = {config.storage.tombstone_grace_s}: must exceed "
            f"cluster.max_hint_window_s = {hint_window} (a hint may be replayed that late)",
            field="storage.tombstone_grace_s",
        )
    if config.search.hedge_floor_ms > config.search.hedge_cap_ms:
        raise ConfigError(
            f"search.hedge_floor_ms = {config.search.hedge_floor_ms}: must not exceed "
            f"search.hedge_cap_ms = {config.search.hedge_cap_ms}", field="search.hedge_floor_ms",
        )
    if config.search.breaker_open_s > config.search.breaker_max_open_s:
        raise ConfigError(
            f"search.breaker_open_s = {config.search.breaker_open_s}: must not exceed "
            f"search.breaker_max_open_s = {config.search.breaker_max_open_s}", field="search.breaker_open_s",
        )
    # With max_tokens 0 the window is known only once the model loads; the chunker checks then.
    if config.chunking.max_tokens and config.chunking.overlap_tokens >= config.chunking.max_tokens:
        raise ConfigError(
            f"chunking.overlap_tokens = {config.chunking.overlap_tokens}: must be smaller than "
            f"chunking.max_tokens = {config.chunking.max_tokens}",
            field="chunking.overlap_tokens",
        )
    roles = set(config.node.roles)
    if "storage" not in roles and "coordinator" in roles:
        # A coordinator reads and writes through the cluster service, which lives beside local partitions.
        raise ConfigError(f"node.roles = {config.node.roles}: the coordinator role needs the storage role", field="node.roles")
    generation = config.generation
    if generation.backend == "openai" and not (generation.openai_base_url and generation.openai_model):
        raise ConfigError(
            "generation.backend = 'openai' needs generation.openai_base_url (the server's URL, e.g. "
            "http://127.0.0.1:8000/v1) and generation.openai_model", field="generation.openai_base_url",
        )
    if generation.backend == "vllm" and not generation.model:
        raise ConfigError(
            "generation.backend = 'vllm' needs generation.model (a model directory or name vLLM can load "
            "offline); the bundled GGUF is for llama.cpp", field="generation.model",
        )
    if config.api.keys and config.node.dev:
        raise ConfigError("api.keys = true needs a node without --dev (dev mode authenticates nobody)", field="api.keys")
    host, _ = parse_host_port(config.node.bind)
    if config.node.dev and not is_loopback(host):
        raise ConfigError(
            f"node.bind = {config.node.bind!r} listens beyond loopback, and --dev authenticates nobody: "
            "dev mode binds loopback only (drop --dev: the node then creates or reads a cluster secret)",
            field="node.dev",
        )
    if config.node.secret and config.node.secret_file:
        raise ConfigError("node.secret and node.secret_file are both set: give the cluster secret once", field="node.secret_file")


def _flatten_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", field="config") from None
    flat: dict[str, Any] = {}
    for section_name, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top-level key {section_name!r} must be a [section]", field=section_name)
        for name, value in values.items():
            flat[f"{section_name}.{name}"] = value
    return flat


def _env_values(environ: Mapping[str, str], config: Config) -> dict[str, str]:
    """MESHRAG_<SECTION>_<KEY>, e.g. MESHRAG_EMBEDDER_THREADS=2.

    A variable of a known section that names no setting is an error: silently
    ignoring a misspelt one would leave the node running on a value nobody chose.
    """
    by_env_name = {_env_name(key): key for key in _known_keys(config)}
    found: dict[str, str] = {}
    for env_name, value in environ.items():
        if env_name in by_env_name:
            found[by_env_name[env_name]] = value
        elif env_name not in ENV_NOT_SETTINGS and _names_a_section(env_name, config):
            raise _unknown_env_name(env_name, by_env_name)
    return found


def _names_a_section(env_name: str, config: Config) -> bool:
    """MESHRAG_<SECTION>_... of a known section (section names have no '_', keys may)."""
    if not env_name.startswith(ENV_PREFIX):
        return False
    return env_name[len(ENV_PREFIX):].partition("_")[0].lower() in sections(config)


def _unknown_env_name(env_name: str, by_env_name: Mapping[str, str]) -> ConfigError:
    section, _, name = env_name[len(ENV_PREFIX):].lower().partition("_")
    suggestion = _closest(env_name.upper(), list(by_env_name))
    return ConfigError(
        f"environment variable {env_name} names no setting; did you mean {suggestion} ({by_env_name[suggestion]})?",
        field=f"{section}.{name}",
    )


def load_config(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config. `overrides` are CLI flags as {"section.key": value}."""
    environ = os.environ if environ is None else environ
    config = Config()
    origins: dict[str, str] = {}
    path = Path(config_file) if config_file else Path(environ.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG_PATH))
    explicit = bool(config_file or f"{ENV_PREFIX}CONFIG" in environ)
    if path.exists() or explicit:
        for key, value in _flatten_file(path).items():
            _set_value(config, key, value, str(path), from_text=False)
            origins[key] = str(path)
    for key, value in _env_values(environ, config).items():
        env_name = _env_name(key)
        _set_value(config, key, value, env_name, from_text=True)
        origins[key] = env_name
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        flag = "--" + key.partition(".")[2].replace("_", "-")
        _set_value(config, key, value, f"flag {flag}", from_text=isinstance(value, str))
        origins[key] = f"flag {flag}"
    _validate(config, origins)
    return config


def as_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The effective config, secret redacted (for /v1/cluster and logs)."""
    result = {name: dataclasses.asdict(section) for name, section in sections(config).items()}
    if result["node"]["secret"]:
        result["node"]["secret"] = "***"
    return result
