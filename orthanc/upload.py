"""Upload DICOM files to Orthanc's REST API; optionally wait until spine-node's SEG and SR are in the study.

The demo's third step (README): put a CT series into the local Orthanc the way a scanner
would, then watch the node's results arrive beside it::

    .venv/bin/python orthanc/upload.py demo-ct --wait 600

Every file under the given files and folders that starts like a DICOM Part 10 file
(``DICM`` at byte 128) is POSTed to ``/instances``; other files (NIfTI truth, JSON) are
skipped. One line per study says its Orthanc ID (for ``/studies/<id>/series``) and how
many instances it holds. With ``--wait S`` the study's series are polled until a SEG and
an SR series are there (each new series printed once as it appears), at most S seconds.

Exit status: 0 when everything was stored (and, with ``--wait``, the SEG and SR arrived),
1 when Orthanc refused a file, could not be reached, or the wait ran out, 2 when no DICOM
file was found. Standard library only, like ``local_orthanc.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8042"
RESULT_MODALITIES = ("SEG", "SR")


class UploadError(RuntimeError):
    """Orthanc refused a file or could not be reached; the message says which and why, in one line."""


def dicom_files(paths: list[Path]) -> list[Path]:
    """The DICOM Part 10 files among ``paths`` (folders searched recursively), sorted by path."""
    found = []
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found += [p for p in candidates if _is_dicom(p)]
    return found


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _request(url: str, data: bytes | None = None, timeout: float = 60.0):
    """GET (or POST ``data``) and parse the JSON answer; ``UploadError`` with Orthanc's own reason."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/dicom"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise UploadError(f"Orthanc answered HTTP {exc.code}{_orthanc_reason(exc)}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UploadError(f"cannot reach Orthanc at {url} ({reason}); is it running? (make orthanc)") from None


def _orthanc_reason(exc: urllib.error.HTTPError) -> str:
    """Orthanc's error JSON (Message, Details) as ' (message: details)', or '' when it sent none."""
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return ""
    parts = [str(body[k]) for k in ("Message", "Details") if isinstance(body, dict) and body.get(k)]
    return f" ({': '.join(parts)})" if parts else ""


def upload(url: str, path: Path) -> dict:
    """POST one file to ``/instances``; Orthanc's answer (ID, ParentStudy, Status...)."""
    try:
        return _request(f"{url}/instances", path.read_bytes())
    except UploadError as exc:
        raise UploadError(f"{path}: {exc}") from None


def study_series(url: str, study_id: str) -> list[dict]:
    """The series of an Orthanc study, as ``/studies/<id>/series`` gives them."""
    return _request(f"{url}/studies/{study_id}/series")


def describe_series(series: dict) -> str:
    """One line: modality, instance count, description, Orthanc ID."""
    tags = series.get("MainDicomTags", {})
    count = len(series.get("Instances", []))
    return (f"{tags.get('Modality', '?'):<4} {count:>4} instance(s)  {tags.get('SeriesDescription', '')!r}  "
            f"/series/{series['ID']}")


def wait_for_results(url: str, study_id: str, timeout_s: float, interval_s: float = 2.0,
                     out=None) -> bool:
    """Poll the study until it holds a SEG and an SR series; print each new series once. True if both came."""
    out = out or sys.stdout
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        series = study_series(url, study_id)
        for item in series:
            if item["ID"] not in seen:
                seen.add(item["ID"])
                print(f"  + {describe_series(item)}", file=out, flush=True)
        modalities = {item.get("MainDicomTags", {}).get("Modality") for item in series}
        if all(m in modalities for m in RESULT_MODALITIES):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="upload.py", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"Orthanc's REST API (default {DEFAULT_URL})")
    p.add_argument("--wait", type=float, metavar="S", help="then wait up to S seconds for the SEG and SR")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.url.rstrip("/")
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    files = dicom_files(args.paths)
    if not files:
        print(f"error: no DICOM file in {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    studies: dict[str, int] = {}
    failures = 0
    for path in files:
        try:
            answer = upload(url, path)
        except UploadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if "cannot reach Orthanc" in str(exc):
                return 1
            failures += 1
            continue
        studies[answer["ParentStudy"]] = studies.get(answer["ParentStudy"], 0) + 1
    print(f"uploaded {len(files) - failures} of {len(files)} DICOM file(s) to {url}")
    for study_id, count in studies.items():
        print(f"study {study_id}: {count} instance(s) uploaded; its series: {url}/studies/{study_id}/series")
    if failures:
        return 1
    if args.wait is None:
        return 0
    ok = True
    for study_id in studies:
        print(f"waiting up to {args.wait:g} s for the SEG and SR in study {study_id}", flush=True)
        try:
            arrived = wait_for_results(url, study_id, args.wait)
        except UploadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if arrived:
            print(f"study {study_id}: SEG and SR arrived")
        else:
            print(f"error: study {study_id}: no SEG and SR after {args.wait:g} s "
                  "(see `spine-node jobs list` and the node's log)", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
