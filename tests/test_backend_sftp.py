"""SFTP specifics against a real OpenSSH sshd: every auth flavour, host key checks, paths."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from rtk_archiver.streams import VerifyingReader
from storage_backends import PermanentStorageError
from tests.fixtures.sshd import sftp_settings


def blob(n: int):
    for i in range(0, n, 65536):
        yield bytes([i % 251]) * min(65536, n - i)


def round_trip(backend, size: int = 3 * 1024 * 1024 + 7) -> None:
    backend.put("a/b/rec.mp4", VerifyingReader(blob(size), size), size)
    assert backend.stat("a/b/rec.mp4").size == size
    assert (backend.base_path / "a/b/rec.mp4").read_bytes() == b"".join(blob(size))


@pytest.mark.parametrize("user", ["rtkpass", "rtked25519", "rtkrsa", "rtkecdsa"])
def test_password_and_key_auth(sftp_backend_factory, user):
    """PASSWORD; Ed25519 (OpenSSH format) with passphrase; RSA in PEM format without; ECDSA."""
    round_trip(sftp_backend_factory(user))


def test_key_from_file(sftp_backend_factory, sshd_server):
    u = sshd_server.users["rtked25519"]
    backend = sftp_backend_factory("rtked25519", sftp_private_key=None, sftp_private_key_file=u.key_path)
    round_trip(backend, 1000)


def secrets_of(sshd_server) -> list[str]:
    out = []
    for u in sshd_server.users.values():
        out += [s for s in (u.password, u.passphrase) if s]
        if u.key_path:
            out.append(u.key_text.splitlines()[1])
    return out


@pytest.mark.parametrize(
    "user, override, fragment",
    [
        ("rtkpass", {"sftp_password": "wrong-password-123"}, "authentication failed"),
        ("rtked25519", {"sftp_password": "wrong-passphrase-456"}, "passphrase"),
        ("rtked25519", {"sftp_password": None}, "encrypted"),
        ("rtkrsa", {"sftp_private_key": "not a key at all"}, "cannot be read"),
        ("rtkpass", {"sftp_password": None}, "SFTP_PASSWORD"),
    ],
)
def test_bad_credentials_are_clear_and_secret_free(sftp_backend_factory, sshd_server, user, override, fragment, caplog):
    backend = sftp_backend_factory(user, **override)
    with pytest.raises(PermanentStorageError, match=fragment) as info:
        backend.stat("x")
    text = str(info.value) + caplog.text
    for secret in secrets_of(sshd_server) + ["wrong-password-123", "wrong-passphrase-456"]:
        assert secret not in text


def test_wrong_key_for_user(sftp_backend_factory, sshd_server):
    other = sshd_server.users["rtkecdsa"].key_text
    backend = sftp_backend_factory("rtkrsa", sftp_private_key=other)
    with pytest.raises(PermanentStorageError, match="authentication failed"):
        backend.stat("x")


def test_unknown_host_key_is_refused(sftp_backend_factory, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    backend = sftp_backend_factory(sftp_known_hosts=empty)
    with pytest.raises(PermanentStorageError, match="unknown.*ssh-keyscan"):
        backend.stat("x")
    assert empty.read_text() == ""


def test_changed_host_key_is_refused(sftp_backend_factory, sshd_server, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd_server.port} {' '.join(open(f'{other}.pub').read().split()[:2])}\n")
    backend = sftp_backend_factory(sftp_known_hosts=known)
    with pytest.raises(PermanentStorageError, match="CHANGED"):
        backend.stat("x")


def test_trusting_unknown_hosts_is_an_explicit_opt_in(sftp_backend_factory, sshd_server, tmp_path):
    known = tmp_path / "new" / "known_hosts"
    assert sftp_settings(sshd_server, sftp_known_hosts=known).sftp_trust_unknown_hosts is False
    backend = sftp_backend_factory(sftp_known_hosts=known, sftp_trust_unknown_hosts=True)
    assert backend.stat("x") is None
    assert sshd_server.host_key_line in known.read_text()


def test_absolute_root_and_missing_directories(sftp_backend_factory, sshd_server):
    base = f"/home/rtkpass/abs-{uuid.uuid4().hex[:8]}/deep/er"
    backend = sftp_backend_factory(root=base)
    backend.put_bytes("x/y.json", b"{}")
    assert (sshd_server.home("rtkpass") / base.split("/home/rtkpass/")[1] / "x/y.json").read_bytes() == b"{}"


def test_permission_denied_is_permanent(sftp_backend_factory):
    backend = sftp_backend_factory(root="/root/forbidden")
    with pytest.raises(PermanentStorageError, match="directory|permission"):
        backend.put_bytes("x.json", b"{}")
