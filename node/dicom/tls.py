"""DICOM TLS contexts (PS3.15 Annex B.9, BCP 195 profile: TLS 1.2 or newer).

:func:`server_context` is what the listener wraps its socket with;
:func:`client_context` is what the sender passes to pynetdicom as
``tls_args=(context, server_hostname)``. Certificates and keys are PEM files
named in :class:`node.config.TLSSettings`.
"""

from __future__ import annotations

import ssl

from node.config import TLSSettings

__all__ = ["server_context", "client_context"]


def server_context(tls: TLSSettings) -> ssl.SSLContext:
    """A server context with the node's certificate.

    With ``tls.ca`` set, client certificates are verified against it; with
    ``tls.require`` a client without a valid certificate is refused.
    """
    if not tls.enabled:
        raise ValueError("TLS listening needs tls.cert and tls.key (PEM files)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(cafile=str(tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(tls: TLSSettings, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context that verifies the peer against ``tls.ca`` (or the system CAs)
    and presents ``tls.cert``/``tls.key`` when set (for peers requiring mutual TLS).

    ``check_hostname``: also check that the certificate names the host (pass the
    host as ``server_hostname``); turn it off only for certificates issued to an
    AE rather than a host name.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca is not None:
        context.load_verify_locations(cafile=str(tls.ca))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.enabled:
        context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    return context
