"""`flask flows keygen`: a new key pair for the Flows data endpoint."""

from __future__ import annotations

import os
from pathlib import Path

import click

from webhook.core.cli import flows
from webhook.core.settings import INSTANCE_DIR
from webhook.flows.crypto import generate_key_pair

MIN_PASSPHRASE = 8


@flows.command("keygen")
@click.option(
    "--private-key",
    "private_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: INSTANCE_DIR / "flows_private_key.pem",
    show_default="instance/flows_private_key.pem",
    help="Where to write the passphrase-protected private key (mode 0600).",
)
@click.option(
    "--public-key",
    "public_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: INSTANCE_DIR / "flows_public_key.pem",
    show_default="instance/flows_public_key.pem",
    help="Where to write the public key.",
)
@click.option("--force", is_flag=True,
              help="Write the private key inside a git work tree all the same.")  # fmt: skip
@click.option(
    "--passphrase",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Passphrase protecting the private key (asked for when not given).",
)
def keygen(private_path: Path, public_path: Path, force: bool, passphrase: str) -> None:
    """Write a new RSA-2048 key pair and print the public key to upload to Meta.

    The private key is PKCS#8 PEM encrypted with the passphrase, written with mode
    0600 into the instance folder (ignored by git) unless you name another path; a
    path inside any other git work tree is refused unless --force. Existing files are
    never overwritten.
    """
    tree = _git_work_tree(private_path)
    if tree is not None and not force and not _ignored_instance(private_path):
        raise click.ClickException(
            f"{private_path} is inside the git work tree {tree}: a private key there is one "
            "`git add` away from a leak; choose a path outside it, or pass --force"
        )
    if len(passphrase) < MIN_PASSPHRASE:
        raise click.ClickException(f"the passphrase needs at least {MIN_PASSPHRASE} characters")
    if "," in passphrase or passphrase != passphrase.strip():
        # FLOWS_PRIVATE_KEY_PASSPHRASE is comma-separated, spaces around each removed.
        raise click.ClickException(
            "the passphrase cannot contain a comma or start or end with a space: "
            "FLOWS_PRIVATE_KEY_PASSPHRASE could not give it back"
        )
    for path in (private_path, public_path):
        if path.exists():
            raise click.ClickException(f"{path} exists; refusing to overwrite it")
    if private_path.resolve() == public_path.resolve():
        raise click.ClickException("--private-key and --public-key name the same file")
    private_pem, public_pem = generate_key_pair(passphrase)
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    click.echo(public_pem.decode("ascii"), nl=False)
    click.echo(
        f"wrote {private_path} (private, passphrase-protected) and {public_path} (public).\n"
        "Next: upload the public key above for each phone number "
        "(POST /<PHONE_NUMBER_ID>/whatsapp_business_encryption, business_public_key), then\n"
        f"set FLOWS_PRIVATE_KEY={private_path.resolve()} and FLOWS_PRIVATE_KEY_PASSPHRASE.",
        err=True,
    )


def _git_work_tree(path: Path) -> Path | None:
    """The git work tree holding ``path`` (or the folder it will be written to), if any."""
    folder = path.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def _ignored_instance(path: Path) -> bool:
    """True for a path in this service's instance folder (ignored by its .gitignore)."""
    return path.resolve().is_relative_to(INSTANCE_DIR)


def _write_new(path: Path, content: bytes, mode: int) -> None:
    """Create ``path`` (never replace it) with ``mode`` and write ``content``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; refusing to overwrite it") from None
    except OSError as err:
        raise click.ClickException(f"cannot write {path}: {err.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
