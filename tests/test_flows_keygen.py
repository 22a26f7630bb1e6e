"""`flask flows keygen`: a passphrase-protected key pair the endpoint can load and use."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from flask import Flask

from tests.flows_helpers import flows_settings, post_flow
from webhook import create_app
from webhook.core.settings import Settings
from webhook.flows import crypto
from webhook.flows.recording import flush_all

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(make_app: MakeApp) -> Iterator[MakeApp]:
    """conftest's make_app, with every queued flow_exchanges row written before cleanup."""
    yield make_app
    flush_all()


def cli_app(tmp_path: Path) -> Flask:
    return create_app(Settings().with_overrides(database_url=f"sqlite:///{tmp_path}/cli.db"))


def keygen(app: Flask, tmp_path: Path, *args: str, input: str | None = None) -> Result:
    private, public = tmp_path / "flows.pem", tmp_path / "flows.pub.pem"
    command = ["flows", "keygen", "--private-key", str(private), "--public-key", str(public)]
    return app.test_cli_runner().invoke(args=[*command, *args], input=input)


def test_keygen_writes_a_protected_pair_and_prints_the_public_key(tmp_path: Path) -> None:
    result = keygen(cli_app(tmp_path), tmp_path, "--passphrase", "correct horse")
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "flows.pem", tmp_path / "flows.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in private.read_bytes()
    assert result.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert result.stdout == public.read_text()
    key = crypto.load_private_key(str(private), "correct horse")
    assert crypto.public_key_pem(key) == public.read_bytes()
    assert "FLOWS_PRIVATE_KEY=" in result.stderr


def test_keygen_asks_for_the_passphrase_twice(tmp_path: Path) -> None:
    result = keygen(cli_app(tmp_path), tmp_path, input="a long phrase\na long phrase\n")
    assert result.exit_code == 0, result.output
    crypto.load_private_key(str(tmp_path / "flows.pem"), "a long phrase")


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    app = cli_app(tmp_path)
    (tmp_path / "flows.pub.pem").write_text("keep me")
    result = keygen(app, tmp_path, "--passphrase", "correct horse")
    assert result.exit_code == 1
    assert "flows.pub.pem exists; refusing to overwrite it" in result.output
    assert (tmp_path / "flows.pub.pem").read_text() == "keep me"
    assert not (tmp_path / "flows.pem").exists()


def test_keygen_refuses_a_short_passphrase(tmp_path: Path) -> None:
    result = keygen(cli_app(tmp_path), tmp_path, "--passphrase", "short")
    assert result.exit_code == 1
    assert "at least 8 characters" in result.output
    assert not (tmp_path / "flows.pem").exists()


@pytest.mark.parametrize("passphrase", ["comma,separated", " leading space", "trailing space "])
def test_keygen_refuses_a_passphrase_the_variable_cannot_hold(
    tmp_path: Path, passphrase: str
) -> None:
    """FLOWS_PRIVATE_KEY_PASSPHRASE is comma-separated, spaces around each removed."""
    result = keygen(cli_app(tmp_path), tmp_path, "--passphrase", passphrase)
    assert result.exit_code == 1
    assert "cannot contain a comma or start or end with a space" in result.output
    assert not (tmp_path / "flows.pem").exists()


def test_generated_key_serves_the_endpoint(tmp_path: Path, make_app: Callable[..., Flask]) -> None:
    assert keygen(cli_app(tmp_path), tmp_path, "--passphrase", "correct horse").exit_code == 0
    public = crypto.load_private_key(str(tmp_path / "flows.pem"), "correct horse").public_key()
    settings = flows_settings(
        meta_app_secret=(),
        flows_private_key=(str(tmp_path / "flows.pem"),),
        flows_private_key_passphrase=("correct horse",),
    )
    client = make_app(**settings).test_client()
    fields, aes_key, iv = crypto.encrypt_request({"action": "INIT", "flow_token": "k"}, public)
    response = post_flow(client, json.dumps(fields))
    assert response.status_code == 200
    answer = crypto.decrypt_response(response.get_data(), aes_key, iv)
    assert answer["screen"] == "APPOINTMENT"


def test_keygen_refuses_a_git_work_tree_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    app = cli_app(tmp_path)
    private, public = tmp_path / "repo" / "k.pem", tmp_path / "repo" / "k.pub.pem"
    args = ["flows", "keygen", "--private-key", str(private), "--public-key", str(public),
            "--passphrase", "correct horse"]  # fmt: skip
    refused = app.test_cli_runner().invoke(args=args)
    assert refused.exit_code == 1
    assert "inside the git work tree" in refused.output and not private.exists()
    forced = app.test_cli_runner().invoke(args=[*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_keygen_writes_into_the_instance_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webhook.flows import keys_cli

    instance = tmp_path / "instance"  # stands for <repository>/instance (git-ignored)
    monkeypatch.setattr(keys_cli, "INSTANCE_DIR", instance)
    result = (
        cli_app(tmp_path)
        .test_cli_runner()
        .invoke(args=["flows", "keygen", "--passphrase", "correct horse"])
    )
    assert result.exit_code == 0, result.output
    private = instance / "flows_private_key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (instance / "flows_public_key.pem").exists()
    assert str(private.resolve()) in result.stderr
