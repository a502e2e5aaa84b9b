"""Errors of the node and its command line, each with a message a person can act on."""


class NodeError(Exception):
    """Base class of the errors raised by ``dicom_node`` (bad arguments, configuration, I/O)."""


class ConfigError(NodeError):
    """The configuration (file and ``SPINE_NODE_*`` variables) has mistakes; ``messages`` lists each, one line each."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        if len(self.messages) == 1:
            text = self.messages[0]
        else:
            text = f"{len(self.messages)} configuration mistakes:\n" + "\n".join(f"  {m}" for m in self.messages)
        super().__init__(text)
