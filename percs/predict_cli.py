"""The name `percs.predict_cli`, kept for code written before prediction moved into a package: it is the module
`percs.predict.cli` itself (not a copy), so that whatever patches or imports one sees the other."""

import sys

from percs.predict import cli

sys.modules[__name__] = cli
