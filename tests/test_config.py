"""config.py: precedence, documented defaults, clear errors."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from meshrag.api.schema import MAX_ID_CHARS, MAX_METADATA_DEPTH, MAX_METADATA_KEYS
from meshrag.config import Config, as_dict, load_config, sections
from meshrag.errors import ConfigError
from meshrag.store.filters import MAX_DEPTH, MAX_FIELD_CHARS, MAX_LIST_ITEMS
from meshrag.wire import MAX_BODY_DEPTH

REPO = Path(__file__).resolve().parents[1]


def test_shipped_conf_documents_every_key_with_its_default() -> None:
    shipped = tomllib.loads((REPO / "conf" / "meshrag.toml").read_text())
    defaults = Config()
    for name, section in sections(defaults).items():
        keys = {f.name for f in dataclasses.fields(section)}
        assert set(shipped[name]) == keys, f"[{name}] keys differ from config.py"
        for key in keys:
            assert shipped[name][key] == getattr(section, key), f"{name}.{key} default differs"
    assert set(shipped) == set(sections(defaults))


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text('[embedder]\nthreads = 3\nmax_batch = 8\n[node]\nzone = "file-zone"\n')
    env = {"MESHRAG_EMBEDDER_THREADS": "4", "MESHRAG_NODE_ZONE": "env-zone"}
    config = load_config(conf, {"node.zone": "flag-zone"}, environ=env)
    assert config.embedder.max_batch == 8  # file over default
    assert config.embedder.threads == 4  # env over file
    assert config.node.zone == "flag-zone"  # flag over env
    assert config.generation.threads == 1  # default kept


def test_no_file_and_no_flags_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config == Config()


def test_bad_env_value_names_key_value_and_source() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={"MESHRAG_EMBEDDER_THREADS": "many"})
    assert err.value.field == "embedder.threads"
    assert "'many'" in err.value.message and "MESHRAG_EMBEDDER_THREADS" in err.value.message


def test_out_of_range_value_says_what_is_allowed(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text("[cluster]\npartitions = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={})
    assert err.value.field == "cluster.partitions"
    assert "1..4096" in err.value.message and str(conf) in err.value.message


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text("[embedder]\nthraeds = 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={})
    assert err.value.field == "embedder.thraeds"


@pytest.mark.parametrize(
    ("text", "field", "closest"),
    [
        ("[embedder]\nmax_bacth = 2\n", "embedder.max_bacth", "embedder.max_batch"),
        ("[embeder]\nthreads = 2\n", "embeder.threads", "embedder.threads"),  # a misspelt section
    ],
)
def test_unknown_key_in_file_names_the_closest_known_key(tmp_path: Path, text: str, field: str, closest: str) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={})
    assert err.value.field == field and f"did you mean {closest!r}" in err.value.message


@pytest.mark.parametrize(
    ("env_name", "field", "closest"),
    [
        ("MESHRAG_EMBEDDER_THRAEDS", "embedder.thraeds", "MESHRAG_EMBEDDER_THREADS"),
        ("MESHRAG_CLUSTER_REPLICA", "cluster.replica", "MESHRAG_CLUSTER_REPLICAS"),
        ("MESHRAG_API_MAXK", "api.maxk", "MESHRAG_API_MAX_K"),
        ("MESHRAG_GOSSIP_PROBE_INTERVAL", "gossip.probe_interval", "MESHRAG_GOSSIP_PROBE_INTERVAL_S"),
        ("MESHRAG_node_zone", "node.zone", "MESHRAG_NODE_ZONE"),
    ],
)
def test_misspelt_env_variable_of_a_known_section_names_the_closest_key(env_name: str, field: str, closest: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={env_name: "2"})
    assert err.value.field == field
    assert env_name in err.value.message and f"did you mean {closest}" in err.value.message


def test_env_variables_that_are_not_settings_stay_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "MESHRAG_CONFIG": str(REPO / "conf/meshrag.toml"),
        "MESHRAG_NODE": "http://127.0.0.1:7071",  # the CLI's default --node, though it looks like a node.* setting
        **{name: "x" for name in ("MESHRAG_DATA_DIR", "MESHRAG_EXTRAS", "MESHRAG_VENV", "MESHRAG_DEMO_PORT", "MESHRAG_DEMO_DATA")},
        "MESHRAG_SOMETHING_ELSE": "x",  # not a known section: not ours to judge
    }
    assert load_config(environ=env) == Config()


def test_shipped_conf_documents_the_fixed_request_limits() -> None:
    comments = " ".join(line for line in (REPO / "conf" / "meshrag.toml").read_text().splitlines() if line.startswith("#"))
    for documented in (f"at most {MAX_BODY_DEPTH} objects/arrays deep", f"at most {MAX_METADATA_DEPTH} levels below the metadata",
                       f"{MAX_METADATA_KEYS} keys per object", f"at most {MAX_DEPTH} levels of $and/$or",
                       f"{MAX_LIST_ITEMS} entries per", f"1..{MAX_FIELD_CHARS} characters", f"1..{MAX_ID_CHARS} characters",
                       "signed 64-bit", "lone UTF-16 surrogates"):
        assert documented in comments, documented


def test_list_flags_split_on_commas() -> None:
    config = load_config(None, {"node.roles": "storage,coordinator", "node.join": "10.0.0.1:7070, 10.0.0.2:7070"}, environ={"MESHRAG_CONFIG": str(REPO / "conf/meshrag.toml")})
    assert config.node.roles == ["storage", "coordinator"]
    assert config.node.join == ["10.0.0.1:7070", "10.0.0.2:7070"]


def test_unknown_role_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"node.roles": "storage,gpu"}, environ={})
    assert err.value.field == "node.roles"


def test_default_roles_leave_out_the_embedder_only_role() -> None:
    assert Config().node.roles == ["storage", "coordinator", "generator"]
    assert load_config(None, {"node.roles": "embedder"}).node.roles == ["embedder"]
    assert load_config(None, {"node.roles": "embedder,generator"}).node.roles == ["embedder", "generator"]


def test_the_coordinator_role_needs_the_storage_role() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"node.roles": "coordinator,embedder"})
    assert caught.value.field == "node.roles" and "needs the storage role" in caught.value.message


def test_embedding_backend_is_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"embedder.backend": "onnx"})
    assert caught.value.field == "embedder.backend" and "sentence-transformers | vllm" in caught.value.message


def test_overlap_must_be_smaller_than_chunk() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"chunking.max_tokens": 64, "chunking.overlap_tokens": 64}, environ={})
    assert err.value.field == "chunking.overlap_tokens"


def test_chunk_size_defaults_to_the_model_window() -> None:
    # 0 = the embedding model's window, resolved by the chunker once the model is loaded.
    config = load_config(None, {}, environ={})
    assert config.chunking.max_tokens == 0
    with pytest.raises(ConfigError) as err:
        load_config(None, {"chunking.max_tokens": 8}, environ={})
    assert err.value.field == "chunking.max_tokens"


def test_dev_mode_is_refused_beyond_loopback_and_a_public_bind_needs_no_flag() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"node.bind": "0.0.0.0:7070", "node.dev": True}, environ={})
    assert err.value.field == "node.dev" and "loopback" in err.value.message
    assert load_config(None, {"node.bind": "127.0.0.1:7070", "node.dev": True}, environ={}).node.dev
    # Secure by default: without a secret the node creates one (security/secret.py), so this is fine.
    assert load_config(None, {"node.bind": "0.0.0.0:7070"}, environ={})
    assert load_config(None, {"node.bind": "0.0.0.0:7070", "node.secret": "s" * 16}, environ={})
    with pytest.raises(ConfigError) as err:
        load_config(None, {"node.secret": "s" * 16, "node.secret_file": "/x"}, environ={})
    assert err.value.field == "node.secret_file"


def test_as_dict_redacts_secret() -> None:
    config = load_config(None, {"node.secret": "x" * 20}, environ={})
    assert as_dict(config)["node"]["secret"] == "***"


def test_the_mesh_message_limit_must_hold_one_document_of_the_longest_text() -> None:
    with pytest.raises(ConfigError) as failure:
        load_config(None, {"cluster.max_message_bytes": 2 * 1024 * 1024, "api.max_text_chars": 1_000_000}, environ={})
    assert failure.value.field == "cluster.max_message_bytes"
    assert load_config(None, {"cluster.max_message_bytes": 2 * 1024 * 1024, "api.max_text_chars": 100_000}, environ={})


def test_the_tombstone_grace_period_must_outlast_the_hint_window() -> None:
    with pytest.raises(ConfigError) as failure:
        load_config(None, {"storage.tombstone_grace_s": 3600.0}, environ={})
    assert failure.value.field == "storage.tombstone_grace_s"
