"""tailgate: a QLoRA release pipeline that tests the thing it ships.

One subpackage per DVC stage (base, quantize, curate, train, bundle, evaluate, gate), each a
set of pure functions over typed params; `engines` is the one inference interface that
evaluation and serving share.
"""

__version__ = "0.1.0"
