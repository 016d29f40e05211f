"""The keys file under change: atomic ``keys add``, ``keys revoke``, a malformed file, model refusals."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
import pytest

from telelens.cli import main as cli_main
from telelens.server._private.auth import AuthError, KeyStore, add_key, read_keys_file, revoke_key


def _md(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_keys_add_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    first = add_key(path, "first")
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                names = {k.name for k in read_keys_file(path)}
            except Exception as e:  # a half-written file
                problems.append(f"{type(e).__name__}: {e}")
                continue
            reads += 1
            if "first" not in names:
                problems.append(f"an old key went missing: {sorted(names)}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(150):
            add_key(path, f"k{i}", models=["tiny"], limits={"max_tokens": 100})
    finally:
        stop.set()
        thread.join()
    assert not problems, problems[:3]
    assert reads > 0
    assert len(read_keys_file(path)) == 151
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]  # no temp files left behind
    assert KeyStore(path).authenticate(_md(first)).name == "first"


def test_keys_revoke_cli_and_reload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    assert cli_main(["keys", "add", "alice", "--keys-file", str(path)]) == 0
    alice = capsys.readouterr().out.strip()
    bob = add_key(path, "bob")
    store = KeyStore(path)
    assert store.authenticate(_md(alice)).name == "alice"
    assert cli_main(["keys", "revoke", "alice", "--keys-file", str(path)]) == 0
    with pytest.raises(AuthError) as e:
        store.authenticate(_md(alice))
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert store.authenticate(_md(bob)).name == "bob"
    assert [k.name for k in read_keys_file(path)] == ["bob"]
    assert cli_main(["keys", "revoke", "alice", "--keys-file", str(path)]) == 2
    assert "no key named 'alice'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no key named"):
        revoke_key(path, "carol")


def test_malformed_keys_file_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    alice = add_key(path, "alice")
    good = path.read_text()
    store = KeyStore(path)
    garbage = "keys: [ {name: alice, key_sha256: 'zz'\n  : : secret-looking-garbage"
    path.write_text(garbage)
    with caplog.at_level(logging.WARNING, logger="telelens.server._private.auth"):
        for _ in range(5):
            assert store.authenticate(_md(alice)).name == "alice"
            with pytest.raises(AuthError) as e:
                store.authenticate(_md("tl-unknown"))
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert str(path) not in e.value.message and "garbage" not in e.value.message
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    # a fixed file is picked up again
    path.write_text(good)
    bob = add_key(path, "bob")
    assert store.authenticate(_md(bob)).name == "bob"


def test_malformed_keys_file_at_startup_is_a_config_error(tmp_path: Path) -> None:
    from telelens.server.config import ConfigError

    path = tmp_path / "keys.yaml"
    path.write_text("keys: [")
    with pytest.raises(ConfigError):
        KeyStore(path)


def test_unknown_and_forbidden_models_answer_alike() -> None:
    from telelens.server._private.auth import ApiKey

    key = ApiKey(name="k", models=("a", "b"))
    served = ["a", "b", "secret"]
    KeyStore.authorize(key, "a", served)
    answers = []
    for model in ("secret", "nope"):
        with pytest.raises(AuthError) as e:
            KeyStore.authorize(key, model, served)
        answers.append((e.value.code, e.value.message.replace(repr(model), "<model>")))
    assert answers[0] == answers[1]
    assert answers[0] == (
        grpc.StatusCode.NOT_FOUND,
        "model <model> is not served for this key; your key may use: a, b",
    )
