"""The name `percs.predict_files`, kept for code written before prediction moved into a package: it is the module
`percs.predict.files` itself (not a copy), so that whatever patches or imports one sees the other."""

import sys

from percs.predict import files

sys.modules[__name__] = files
