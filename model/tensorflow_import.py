"""Importing TensorFlow without its start-up lines on the terminal (every Keras path in model/).

    from model.tensorflow_import import import_tensorflow
    tf = import_tensorflow()      # ImportError as usual when it is not installed

TF_CPP_MIN_LOG_LEVEL silences TensorFlow's C++ log once that log is set up, but its first lines
(absl's "All log messages before absl::InitializeLog() is called are written to STDERR" and
oneDNN's notice, each twice) are written to file descriptor 2 during the import, before any
setting applies. So the import runs with fd 2 sent to a temp file, whose text is shown only if
the import fails; afterwards absl's and TensorFlow's Python loggers are set to errors only.
"""

from __future__ import annotations

import os
import sys
import tempfile


def import_tensorflow():
    """The tensorflow module, imported quietly (see the module docstring)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                import tensorflow
            except BaseException:
                os.dup2(saved, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow
