"""Check that the virtual environment can run nnU-Net: torch, torchvision, timm, nnunetv2, DICOM codecs.

Run by `make` right after pip; exits non-zero with one line per problem, so a broken
install (a torchvision that does not match torch, say) fails at set-up, not in a test.
"""
import importlib
import sys


def main() -> int:
    problems = []
    for module in ("torch", "torchvision", "timm", "nnunetv2", "pydicom", "highdicom", "pynetdicom",
                   "SimpleITK", "openjpeg", "libjpeg", "rle"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is a broken install
            problems.append(f"cannot import {module}: {type(exc).__name__}: {exc}")
    if not problems:
        import torch
        import torchvision

        try:
            boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
            torchvision.ops.nms(boxes, torch.tensor([1.0]), 0.5)
        except Exception as exc:
            problems.append(f"torchvision {torchvision.__version__} does not match torch {torch.__version__}: {exc}")
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401

        cuda = torch.cuda.is_available()
        print(f"install OK: torch {torch.__version__}, torchvision {torchvision.__version__}, "
              f"CUDA {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available (CPU inference)'}")
    for line in problems:
        print(f"install check failed: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
