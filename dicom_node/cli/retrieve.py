"""``spine-node retrieve``: bring studies from a PACS to the running node, to be processed as if pushed.

    spine-node retrieve --from AE@host:port (--accession N | --study UID | --patient ID [--date RANGE])
                        [--method move|get] [--calling-ae AE] [--forward-as AE] [--config FILE]
    spine-node retrieve --from dicomweb:http://host:port/dicom-web (--accession N | ...)

C-FIND then C-MOVE to the node's AE title (the default; the PACS must know the node's
address) or C-GET; or QIDO-RS then WADO-RS. The node named by the configuration
(``ae_title``, ``port``; ``host`` 0.0.0.0 is reached on 127.0.0.1) must be running.
Exit 0 when every instance arrived, 1 when nothing matched or some failed (the message
says which), 2 for a usage mistake or a refusal by the PACS (its status shown).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dicom_node.config.settings import load_config
from dicom_node.dimse.retrieve import NodeAddress, NothingFound, Query, parse_source, retrieve


def add_parser(sub) -> None:
    p = sub.add_parser("retrieve", help="fetch studies from a PACS (C-MOVE, C-GET or DICOMweb) into the node")
    p.add_argument("--from", dest="source", required=True, metavar="AE@HOST:PORT|dicomweb:URL",
                   help="the PACS: a DICOM AE, or a DICOMweb service root")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--accession", help="accession number")
    what.add_argument("--study", help="Study Instance UID")
    what.add_argument("--patient", help="Patient ID (with --date to narrow it, e.g. for priors)")
    p.add_argument("--date", help="study date or range with --patient: YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD")
    p.add_argument("--method", choices=("move", "get"), default="move", help="DIMSE retrieve: C-MOVE (default) or C-GET")
    p.add_argument("--calling-ae", help="our AE title towards the PACS (default: the node's ae_title)")
    p.add_argument("--forward-as", help="calling AE of the C-STORE handing C-GET/WADO results to the node "
                                        "(default: the PACS's AE title; the node's ae_title for DICOMweb)")
    p.add_argument("--config", type=Path, help="configuration file (default: $SPINE_NODE_CONFIG, if set)")
    p.set_defaults(handler=cmd_retrieve)


def cmd_retrieve(args: argparse.Namespace) -> int:
    config = load_config(args.config, os.environ)
    source = parse_source(args.source)
    query = Query(accession=args.accession, study_uid=args.study, patient_id=args.patient, date_range=args.date)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    node = NodeAddress(config.ae_title, host, config.port)
    try:
        result = retrieve(source, query, node, args.calling_ae or config.ae_title, args.method, args.forward_as)
    except NothingFound as exc:
        print(f"spine-node: {exc}", file=sys.stderr)
        return 1
    for study in result.studies:
        print(f"study {study.study_uid}" + (f" (accession {study.accession})" if study.accession else ""))
    print(f"{result.instances} instance(s) retrieved into {node.ae_title}@{node.host}:{node.port}"
          + (f"; {result.failed} failed" if result.failed else ""))
    return 1 if result.failed else 0
