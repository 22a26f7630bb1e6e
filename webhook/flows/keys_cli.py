"""`flask flows keygen`: a new key pair for the Flows data endpoint."""

from __future__ import annotations

import os
from pathlib import Path

import click

from webhook.core.cli import flows
from webhook.flows.crypto import generate_key_pair

MIN_PASSPHRASE = 8


@flows.command("keygen")
@click.option(
    "--private-key",
    "private_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="flows_private_key.pem",
    show_default=True,
    help="Where to write the passphrase-protected private key (mode 0600).",
)
@click.option(
    "--public-key",
    "public_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="flows_public_key.pem",
    show_default=True,
    help="Where to write the public key.",
)
@click.option(
    "--passphrase",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Passphrase protecting the private key (asked for when not given).",
)
def keygen(private_path: Path, public_path: Path, passphrase: str) -> None:
    """Write a new RSA-2048 key pair and print the public key to upload to Meta.

    The private key is PKCS#8 PEM encrypted with the passphrase. Existing files are
    never overwritten.
    """
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


def _write_new(path: Path, content: bytes, mode: int) -> None:
    """Create ``path`` (never replace it) with ``mode`` and write ``content``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; refusing to overwrite it") from None
    except OSError as err:
        raise click.ClickException(f"cannot write {path}: {err.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
