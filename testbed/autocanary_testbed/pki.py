"""A throwaway PKI for the local control plane, made with the openssl command line.

One CA signs a serving certificate for 127.0.0.1 (kube-apiserver, controller-manager,
scheduler, kwok) and an admin client certificate in ``system:masters``; a separate
RSA key pair signs ServiceAccount tokens. Every certificate carries subject and
authority key identifiers: Python's strict X.509 verification rejects chains
without them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from autocanary_testbed.errors import HarnessError

_OPENSSL_TIMEOUT_S = 60.0
_DAYS = "3650"
# P-256 keys are generated in milliseconds and are accepted by Go and Python alike.
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files making up the control plane's PKI."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_private_key: Path
    sa_public_key: Path


def make_pki(directory: Path, service_ip: str) -> Pki:
    """Create the CA, the serving and admin certificates and the SA key pair in ``directory``.

    ``service_ip`` is the ``kubernetes`` Service's cluster IP, named in the serving
    certificate beside 127.0.0.1 as a cluster's apiserver certificate names it.

    Raises HarnessError when openssl is missing or fails.
    """
    if shutil.which("openssl") is None:
        raise HarnessError("openssl not found: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    _openssl(
        "req", "-x509", *_EC_KEY, "-days", _DAYS,
        "-subj", "/CN=autocanary-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
    )  # fmt: skip
    _leaf(
        d,
        "serving",
        "/CN=autocanary-test-serving",
        "serverAuth",
        f"IP:127.0.0.1,DNS:localhost,IP:{service_ip},DNS:kubernetes.default.svc",
    )
    _leaf(d, "admin", "/O=system:masters/CN=autocanary-test-admin", "clientAuth", None)
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", str(d / "sa.key"),
    )  # fmt: skip
    _openssl("pkey", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
    return Pki(
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        serving_cert=d / "serving.crt",
        serving_key=d / "serving.key",
        admin_cert=d / "admin.crt",
        admin_key=d / "admin.key",
        sa_private_key=d / "sa.key",
        sa_public_key=d / "sa.pub",
    )


def _leaf(d: Path, name: str, subject: str, usage: str, san: str | None) -> None:
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]
    if san:
        extensions.append(f"subjectAltName={san}")
    ext_file = d / f"{name}.ext"
    ext_file.write_text("\n".join(extensions) + "\n")
    csr = d / f"{name}.csr"
    _openssl(
        "req", "-new", *_EC_KEY, "-subj", subject,
        "-keyout", str(d / f"{name}.key"), "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-days", _DAYS,
        "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-CAcreateserial",
        "-extfile", str(ext_file), "-out", str(d / f"{name}.crt"),
    )  # fmt: skip


def _openssl(*args: str) -> None:
    try:
        subprocess.run(  # noqa: S603 (fixed argv built above)
            ["openssl", *args],  # noqa: S607 (openssl is looked up on PATH on purpose)
            check=True,
            capture_output=True,
            timeout=_OPENSSL_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as e:
        raise HarnessError(
            f"openssl {args[0]} failed ({e.returncode}): {e.stderr.decode(errors='replace')}"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"openssl {args[0]} timed out after {_OPENSSL_TIMEOUT_S:g}s") from e
