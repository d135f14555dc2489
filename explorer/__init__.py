"""CXR Negation Explorer: how medical CLIP-style models treat affirmed vs negated findings.

The package is a library used by the Gradio app (``explorer.ui``), the command line
(``python -m explorer``) and the tests. Nothing here imports gradio except ``explorer.ui``,
and nothing loads a model or touches the network at import time.
"""

__version__ = "0.1.0"
