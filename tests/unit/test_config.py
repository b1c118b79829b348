"""ceph_config parsing: petreloss.conf INI, dicts, the boto3 chain, and the
botocore settings that come out (checksums, addressing, pool, retries)."""
from __future__ import annotations

from typing import Any

import pytest

from blip3o_storage import ConfigError, Storage, load_config, load_petreloss_conf
from blip3o_storage.storage.s3_backend import S3Backend, botocore_config

SECRET = "s3cr3t-DO-NOT-LEAK"

PETRELOSS = f"""
[DEFAULT]
default_cluster = cluster1
max_attempts = 7

[cluster1]
enable_mc = False
boto = True
access_key = AKIAEXAMPLE
secret_key = {SECRET}
host_base = http://10.0.0.1:7480

[cluster2]
access_key = other
secret_key = {SECRET}
host_base = 10.0.0.2:80
addressing_style = virtual
max_pool_connections = 128
connect_timeout = 2.5
"""


def write(tmp_path, text, name="petreloss.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_petreloss_conf_clusters_defaults_and_aliases(tmp_path):
    config = load_petreloss_conf(write(tmp_path, PETRELOSS))
    assert config.default_cluster == "cluster1"
    one, two = config.settings_for(None), config.settings_for("cluster2")
    assert one.endpoint_url == "http://10.0.0.1:7480" and one.access_key == "AKIAEXAMPLE"
    assert one.max_attempts == 7 and two.max_attempts == 7  # [DEFAULT] values apply to every cluster
    assert two.endpoint_url == "http://10.0.0.2:80"  # bare host:port gets http://
    assert two.effective_addressing_style == "virtual" and one.effective_addressing_style == "path"
    assert two.max_pool_connections == 128 and two.connect_timeout == 2.5


def test_secrets_never_in_repr_or_errors(tmp_path):
    config = load_petreloss_conf(write(tmp_path, PETRELOSS))
    assert SECRET not in repr(config)
    assert SECRET not in repr(S3Backend(config.settings_for(None)))
    assert SECRET not in config.settings_for(None).describe()
    with pytest.raises(ConfigError) as info:
        config.settings_for("nope")
    assert SECRET not in str(info.value)
    bad = PETRELOSS.replace("max_pool_connections = 128", f"max_pool_connections = {SECRET}")
    with pytest.raises(ConfigError) as info:
        load_petreloss_conf(write(tmp_path, bad))
    # the bad value is named by option, but a secret_key value is never echoed
    assert "max_pool_connections" in str(info.value)


def test_unknown_cluster_names_file_and_known_clusters(tmp_path):
    path = write(tmp_path, PETRELOSS)
    with pytest.raises(ConfigError) as info:
        Storage(path).get("cluster9:s3://bucket/key")
    message = str(info.value)
    assert "cluster9" in message and path in message and "cluster1" in message and "cluster2" in message


@pytest.mark.parametrize("text, expected", [
    ("not an ini file at all", "not a valid INI"),
    ("[DEFAULT]\ndefault_cluster = c\n", "no [cluster] section"),
    ("[DEFAULT]\ndefault_cluster = missing\n[c]\nhost_base = http://h\n", "has no [missing] section"),
    ("[a]\nhost_base = http://h\n[b]\nhost_base = http://h\n", "no 'default_cluster'"),
    ("[c]\naccess_key = x\nhost_base = http://h\n", "together"),
    ("[c]\nhost_base = ftp://h\n", "not an http"),
    ("[c]\nhost_base = http://h\nmax_attempts = many\n", "max_attempts"),
    ("[c]\nhost_base = http://h\nretry_mode = yolo\n", "retry_mode"),
    ("[c]\nhost_base = http://h\nbogus_option = 1\n", "bogus_option"),
])
def test_malformed_configs_name_the_file_and_problem(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_petreloss_conf(path)
    assert expected in str(info.value)
    assert path in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.conf"))


def test_single_section_without_default_cluster(tmp_path):
    config = load_petreloss_conf(write(tmp_path, "[only]\nhost_base = http://h:1\n"))
    assert config.default_cluster == "only"


def test_dict_configs_flat_and_nested():
    flat = load_config({"endpoint_url": "http://h:1", "access_key": "a", "secret_key": "b"})
    assert flat.settings_for(None).endpoint_url == "http://h:1"
    nested = load_config({"default_cluster": "x", "read_timeout": 5,
                          "x": {"endpoint_url": "http://x"}, "y": {"endpoint_url": "http://y"}})
    assert nested.settings_for(None).endpoint_url == "http://x"
    assert nested.settings_for("y").read_timeout == 5


def test_overrides_apply_to_every_cluster(tmp_path):
    config = load_config(write(tmp_path, PETRELOSS), endpoint_url="http://127.0.0.1:9", max_attempts=2)
    assert {s.endpoint_url for s in config.clusters.values()} == {"http://127.0.0.1:9"}
    assert {s.max_attempts for s in config.clusters.values()} == {2}


def test_environment_chain(monkeypatch, tmp_path):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL", "BLIP3O_CEPH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:7480")
    settings = load_config(None).settings_for(None)
    assert settings.endpoint_url == "http://127.0.0.1:7480"
    assert settings.access_key is None  # left to boto3's own chain
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", write(tmp_path, PETRELOSS))
    assert load_config(None).default_cluster == "cluster1"


def test_botocore_config_for_ceph_vs_aws():
    # botocore's Config sets its options as attributes at runtime, so they are untyped.
    ceph: Any = botocore_config(load_config({"endpoint_url": "https://rgw.example:443"}).settings_for(None))
    assert ceph.request_checksum_calculation == "when_required"
    assert ceph.response_checksum_validation == "when_required"
    assert ceph.s3["addressing_style"] == "path"
    assert ceph.retries == {"mode": "standard", "total_max_attempts": 5}
    assert ceph.max_pool_connections == 64
    aws: Any = botocore_config(load_config({"region": "eu-west-1"}).settings_for(None))
    assert aws.s3["addressing_style"] == "auto"
    assert aws.request_checksum_calculation != "when_required" or aws.request_checksum_calculation is None


def test_verify_and_ca_bundle(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_config({"endpoint_url": "https://h", "verify_ssl": "false"}).settings_for(None).verify is False
    assert load_config({"endpoint_url": "https://h", "ca_bundle": str(bundle)}).settings_for(None).verify == str(bundle)
    with pytest.raises(ConfigError, match="ca_bundle"):
        load_config({"endpoint_url": "https://h", "ca_bundle": str(tmp_path / "missing.pem")})


def test_fast_path_defaults_and_switch():
    on = load_config({"endpoint_url": "http://rgw:7480"}).settings_for(None)
    assert on.use_fast_path  # path-style endpoint: object GET/PUT over signed urllib3
    assert not load_config({"endpoint_url": "http://rgw:7480", "fast_path": "false"}).settings_for(None).use_fast_path
    virtual = load_config({"endpoint_url": "http://rgw", "addressing_style": "virtual"})
    assert not virtual.settings_for(None).use_fast_path
    assert not load_config({"region": "eu-west-1"}).settings_for(None).use_fast_path  # AWS: boto3 all the way
    with pytest.raises(ConfigError, match="fast_path"):
        load_config({"endpoint_url": "http://rgw", "fast_path": "sometimes"})
