"""The progress-callback type every long-running library call accepts.

``progress(fraction, message)``: ``fraction`` in [0, 1] of the call's work done so far and a
short message saying what it is doing. The UI adapts it to ``gr.Progress``, the CLI to a tqdm bar.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``callable(fraction, message)``, called as work advances.
Progress = Callable[[float, str], None]
