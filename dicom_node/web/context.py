"""What the web side needs from the running node, gathered once at start (no globals)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from storage import Store
from storage.operations import Operations

from dicom_node.config.settings import NodeConfig
from dicom_node.runtime.disk import DiskGuard


@dataclass
class WebContext:
    """The store, its operator queries, the configuration, the disk guard and a view of the workers."""

    store: Store
    config: NodeConfig
    guard: DiskGuard
    workers: Callable[[], dict] = field(default=lambda: {"ok": True, "detail": "no worker view"})
    wake_delivery: Callable[[], None] = field(default=lambda: None)
    wake_dispatch: Callable[[], None] = field(default=lambda: None)
    wake_completion: Callable[[], None] = field(default=lambda: None)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        from storage import InstanceFiles

        from dicom_node.web.retrieval import Retrievals

        self.operations = Operations(self.store)
        self.files = InstanceFiles(self.config.data_dir)
        self.retrievals = Retrievals(self.config)
