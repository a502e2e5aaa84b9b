"""Outgoing TLS (D10): with TLS configured, SEG and SR leave over TLS; STOW-RS over https checks the CA bundle.

The destination is the node's own SCP with mutual TLS (it refuses plain TCP and clients
without a certificate signed by the test CA), on a loopback port. The deliverer is the
one ``Node`` builds from its configuration, so the test covers the wiring that was
missing: before, no ``ssl_context`` reached the deliverer and the outputs left over plain
TCP (here: refused by the TLS-only destination, so the test fails on that code).
"""
from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from dicom_node.config.settings import load_config
from dicom_node.dimse.scp import Receiver, ScpSettings, make_ssl_context, start_scp
from dicom_node.dimse.scu import DestinationUnreachable, stow_rs
from dicom_node.runtime.node import Node
from storage import InstanceFiles, Store, open_database
from support.dimse import LOOPBACK, free_port
from support.synthetic_ct import ct_datasets, save, volume


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, and a certificate it signed for localhost / 127.0.0.1 (used by both ends)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
             "-days", "1", "-subj", "/CN=spine-node test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "node.key"), "-out", str(d / "node.csr"),
             "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "node.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-out", str(d / "node.pem"), "-days", "1", "-extfile", str(d / "ext.cnf"))
    return {"ca": d / "ca.pem", "cert": d / "node.pem", "key": d / "node.key"}


def _queue_one_output(store: Store, path: Path, destination: str) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    store.record_instance(sop_instance_uid="1.2.826.0.1.3680043.10.7.1", sop_class_uid=str(ds.SOPClassUID),
                          series_key="1.2.826.0.1.3680043.10.7", series_instance_uid="1.2.826.0.1.3680043.10.7",
                          study_instance_uid=None, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                          calling_ae="SENDER", path=path, size=path.stat().st_size)
    job = store.create_job("1.2.826.0.1.3680043.10.7", "test")
    store.claim_next_job("test")
    store.record_output(job.id, kind="seg", sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                        series_instance_uid=str(ds.SeriesInstanceUID), path=path, destinations=[destination])


def test_outputs_leave_over_tls_when_the_node_has_tls(tmp_path, pki):
    """D10: the node's TLS settings reach the deliverer; the TLS-only destination stores the output."""
    dest_root = tmp_path / "destination"
    dest_store = Store(open_database(f"sqlite:///{tmp_path / 'dest.db'}"))
    dest_receiver = Receiver(dest_store, InstanceFiles(dest_root))
    port = free_port()
    server = start_scp(ScpSettings("DEST", LOOPBACK, port, (), make_ssl_context(str(pki["cert"]), str(pki["key"]),
                                                                                 str(pki["ca"]))), dest_receiver)
    [output] = save(ct_datasets(volume(slices=1, rows=4, columns=4), name="tls-out"), tmp_path / "out")
    config = load_config(None, {"SPINE_NODE_DATA_DIR": str(tmp_path / "node"), "SPINE_NODE_TLS_CERT": str(pki["cert"]),
                                "SPINE_NODE_TLS_KEY": str(pki["key"]), "SPINE_NODE_TLS_CA": str(pki["ca"]),
                                "SPINE_NODE_DESTINATIONS": f"DEST@{LOOPBACK}:{port}"})
    node = Node(config)
    node.store = store = Store(open_database(f"sqlite:///{tmp_path / 'node.db'}"))
    try:
        _queue_one_output(store, output, f"DEST@{LOOPBACK}:{port}")
        assert node._deliverer().run_once() == 1, store.pending_deliveries()
        assert len(InstanceFiles(dest_root).instance_files()) == 1  # stored by the TLS-only destination
    finally:
        server.shutdown()
        dest_receiver.close()
        dest_store.db.close()
        store.db.close()


class _StowHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_stow_rs_over_https_checks_the_ca_bundle(tmp_path, pki):
    """D10: STOW-RS to https succeeds with the configured CA bundle and is refused without it."""
    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), _StowHandler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki["cert"]), str(pki["key"]))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    [output] = save(ct_datasets(volume(slices=1, rows=4, columns=4), name="stow-out"), tmp_path / "out")
    url = f"https://localhost:{httpd.server_address[1]}/dicom-web"
    try:
        assert stow_rs(url, [output], timeout_s=10, verify=str(pki["ca"])) == {output: None}
        with pytest.raises(DestinationUnreachable):
            stow_rs(url, [output], timeout_s=10)  # the system's roots do not know the test CA
    finally:
        httpd.shutdown()
        httpd.server_close()
