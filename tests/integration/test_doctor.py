"""blip3o-doctor against real servers: every check passes on moto and RGW, and each one fails for
its own reason -- a port nobody listens on (endpoint), an untrusted certificate (tls), a wrong
secret (credentials), a signing clock 20 minutes ahead (clock; faked through the time botocore
signs with, not the system clock), a missing bucket (bucket), missing data.json references."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from blip3o_storage.cli import doctor
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.testing.paths import REPO_ROOT


def run_doctor(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict[str, str], str]:
    """(exit status, check name -> status, whole output) of doctor.main(argv)."""
    status = doctor.main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err
    lines = {m.group(2): m.group(1) for m in re.finditer(r"^(PASS|WARN|FAIL|SKIP)\s+(\S+)\s", out.out, re.M)}
    return status, lines, text


def filled_bucket(endpoint: S3Endpoint, tmp_path: Path, n: int = 6) -> tuple[str, Path]:
    """A fresh bucket with n images+captions under raw/ and a local data.json naming them."""
    storage, bucket = new_bucket(endpoint)
    entries = []
    for i in range(n):
        storage.put(f"{bucket}/raw/{i}.jpg", bytes([i]) * (1000 + i))
        storage.put(f"{bucket}/raw/{i}.txt", f"caption {i}".encode())
        entries.append({"image": f"{i}.jpg", "annotation": f"{i}.txt"})
    data_json = tmp_path / "data.json"
    data_json.write_text(json.dumps(entries))
    return bucket, data_json


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_check_passes(s3_endpoint, tmp_path, capsys):
    bucket, data_json = filled_bucket(s3_endpoint, tmp_path)
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw", "--data-json", str(data_json))
    assert status == 0, text
    assert lines == {"config": "PASS", "endpoint": "PASS", "tls": "SKIP", "credentials": "PASS", "clock": "PASS",
                     "bucket": "PASS", "checksums": "PASS", "latency": "PASS", "data.json": "PASS"}, text
    assert "12 GETs: p50" in text and "all 12 references of" in text and "(one listing)" in text
    assert "request_checksum_calculation=when_required" in text
    assert s3_endpoint.secret_key not in text and s3_endpoint.access_key not in text


def test_console_script_wrapper_runs(moto_endpoint, tmp_path):
    bucket, _ = filled_bucket(moto_endpoint, tmp_path, n=1)
    conf = moto_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "doctor.py"), "--config", str(conf),
                           f"{bucket}/raw"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout


def test_stopped_endpoint_fails_at_connect(tmp_path, capsys):
    dead = S3Endpoint("dead", f"http://127.0.0.1:{free_port()}", "AKIDEXAMPLE", "not-a-real-secret-0123")
    conf = dead.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), "s3://bucket/raw")
    assert status == 1, text
    assert lines["endpoint"] == "FAIL" and "Connection refused" in text and "fix: is the store running" in text
    assert lines["credentials"] == "SKIP" and lines["bucket"] == "SKIP"


def test_wrong_secret_fails_at_credentials(moto_auth_endpoint, tmp_path, capsys):
    bucket, _ = filled_bucket(moto_auth_endpoint, tmp_path, n=1)
    wrong = S3Endpoint("wrong", moto_auth_endpoint.endpoint_url, moto_auth_endpoint.access_key,
                       moto_auth_endpoint.secret_key[::-1])
    conf = wrong.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw")
    assert status == 1, text
    assert lines["endpoint"] == "PASS" and lines["credentials"] == "FAIL", text
    assert "SignatureDoesNotMatch" in text and "fix: check access_key and secret_key" in text
    assert lines["bucket"] == "SKIP"
    assert wrong.secret_key not in text and moto_auth_endpoint.secret_key not in text
    # the right secret passes on the same server
    good = moto_auth_endpoint.write_petreloss_conf(tmp_path / "good.conf")
    assert run_doctor(capsys, "--config", str(good), f"{bucket}/raw")[0] == 0


@pytest.mark.parametrize("offset, verdict", [(300, "WARN"), (-1200, "FAIL")])
def test_clock_skew_is_measured_from_the_signing_time(s3_endpoint, tmp_path, capsys, offset, verdict):
    """moto does not check request times, so there the other checks still pass: the clock
    check alone reports what the signer's clock is against the server's Date header."""
    bucket, _ = filled_bucket(s3_endpoint, tmp_path, n=1)
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw", "--clock-offset", str(offset))
    assert lines["clock"] == verdict, text
    measured = float(re.search(r"clock is (\d+) s (ahead of|behind)", text).group(1))  # type: ignore[union-attr]
    assert abs(measured - abs(offset)) <= 3, text
    assert ("ahead of" in text) == (offset > 0)
    assert status == (1 if verdict == "FAIL" else 0), text


@pytest.mark.ceph
def test_rgw_refuses_a_skewed_signature_and_the_doctor_blames_the_clock(ceph_endpoint, tmp_path, capsys):
    bucket, _ = filled_bucket(ceph_endpoint, tmp_path, n=1)
    conf = ceph_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw", "--clock-offset", "1200")
    assert status == 1, text
    assert lines["clock"] == "FAIL" and re.search(r"clock is 1(199|200|201|202) s ahead of the server", text), text
    assert lines["credentials"] == "SKIP" and "RequestTimeTooSkewed" in text  # not "bad credentials"
    assert lines["bucket"] == "SKIP"


@pytest.mark.ceph
def test_wrong_secret_on_rgw(ceph_endpoint, tmp_path, capsys):
    wrong = S3Endpoint("wrong", ceph_endpoint.endpoint_url, ceph_endpoint.access_key, "0" * 40)
    conf = wrong.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), "s3://any-bucket/raw")
    assert status == 1 and lines["credentials"] == "FAIL" and "SignatureDoesNotMatch" in text, text


@pytest.mark.ceph
def test_tls_passes_with_the_ca_bundle_and_fails_without(ceph_https_endpoint, tmp_path, capsys):
    bucket, _ = filled_bucket(ceph_https_endpoint, tmp_path, n=1)
    conf = tmp_path / "https.conf"
    ceph_https_endpoint.write_petreloss_conf(conf)
    with_ca = conf.read_text() + f"ca_bundle = {ceph_https_endpoint.ca_bundle}\n"
    conf.write_text(with_ca)
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw")
    assert status == 0 and lines["tls"] == "PASS" and "verified with" in text, text
    ceph_https_endpoint.write_petreloss_conf(conf)  # no ca_bundle: certifi does not know the dev CA
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw")
    assert status == 1 and lines["tls"] == "FAIL" and "fix: set ca_bundle" in text, text
    assert lines["credentials"] == "SKIP"


def test_missing_bucket_fails_at_bucket(s3_endpoint, tmp_path, capsys):
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), "s3://no-such-bucket-blip3o-doctor/raw")
    assert status == 1, text
    assert lines["credentials"] == "PASS" and lines["bucket"] == "FAIL" and "does not exist" in text, text
    assert lines["latency"] == "SKIP"


def test_missing_references_are_listed(s3_endpoint, tmp_path, capsys):
    bucket, data_json = filled_bucket(s3_endpoint, tmp_path, n=3)
    entries = json.loads(data_json.read_text())
    entries += [{"image": "gone/a.jpg", "annotation": "gone/a.txt"}, {"image": "gone/b.jpg", "caption": "inline"}]
    data_json.write_text(json.dumps(entries))
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw", "--data-json", str(data_json))
    assert status == 1 and lines["data.json"] == "FAIL", text
    assert "3 of all 9 references missing" in text and "(one listing): gone/a.jpg" in text
    assert "gone/a.jpg, gone/a.txt, gone/b.jpg" in text  # an inline caption's annotation is never read
    # --sample N: N HEADs; all 9 drawn, so the same 3 are found
    status, lines, text = run_doctor(capsys, "--config", str(conf), f"{bucket}/raw", "--data-json", str(data_json),
                                     "--sample", "8")
    assert status == 1 and re.search(r"\d of a sample of 8 references missing under \S+ \(one HEAD each\)", text), text


def test_config_errors_exit_2(tmp_path, capsys):
    status, lines, text = run_doctor(capsys, "--config", str(tmp_path / "nope.conf"), "s3://b/raw")
    assert status == 2 and lines["config"] == "FAIL" and "nope.conf" in text and "does not exist" in text
    conf = tmp_path / "petreloss.conf"
    conf.write_text("[DEFAULT]\ndefault_cluster = c1\n[c1]\nhost_base = http://127.0.0.1:1\n")
    status, lines, text = run_doctor(capsys, "--config", str(conf), "other:s3://b/raw")
    assert status == 2 and "unknown cluster 'other'" in text
    status, _, text = run_doctor(capsys, "--config", str(conf), "/local/folder")
    assert status == 2 and "not an s3:// URI" in text


def test_checksum_check_warns_on_a_plain_boto3_client_off_aws(moto_endpoint):
    """The settings it checks are the client's: ours (botocore_config) pass, boto3's defaults
    (when_supported: aws-chunked CRC32 trailers RGW refuses over https with 411) warn, AWS passes."""
    import boto3

    from blip3o_storage.cli.doctor_checks import check_checksums
    from blip3o_storage.storage.config import S3Settings

    ours = S3Settings(endpoint_url=moto_endpoint.endpoint_url, access_key="a", secret_key="b")
    assert check_checksums(ours).status == "PASS"
    plain = boto3.client("s3", endpoint_url=moto_endpoint.endpoint_url, region_name="us-east-1",
                         aws_access_key_id="a", aws_secret_access_key="b")
    result = check_checksums(ours, plain.meta.config)
    assert result.status == "WARN" and "request_checksum_calculation=when_supported" in result.detail, result
    assert "411 MissingContentLength" in result.detail and "AWS_REQUEST_CHECKSUM_CALCULATION" in result.fix
    assert check_checksums(S3Settings(access_key="a", secret_key="b"), plain.meta.config).status == "PASS"


@pytest.mark.ceph
def test_tls_names_a_host_the_certificate_was_not_issued_for(ceph_https_endpoint, tmp_path, capsys):
    """The dev certificate is for 127.0.0.1 and localhost; this machine's own name reaches the same
    RGW (it resolves to loopback here) but is not in the certificate."""
    name = socket.gethostname()
    if name == "localhost" or socket.gethostbyname(name) != "127.0.0.1":
        pytest.skip(f"this host's name {name!r} does not resolve to 127.0.0.1")
    other = S3Endpoint("by-name", ceph_https_endpoint.endpoint_url.replace("127.0.0.1", name),
                       ceph_https_endpoint.access_key, ceph_https_endpoint.secret_key)
    conf = other.write_petreloss_conf(tmp_path / "petreloss.conf")
    conf.write_text(conf.read_text() + f"ca_bundle = {ceph_https_endpoint.ca_bundle}\n")
    status, lines, text = run_doctor(capsys, "--config", str(conf), "s3://any-bucket/raw")
    assert status == 1 and lines["endpoint"] == "PASS" and lines["tls"] == "FAIL", text
    assert f"certificate does not match {name!r}" in text and "fix: use the host name the certificate" in text
