"""The name `percs.api`, kept for code written before prediction moved into a package: it is the module
`percs.predict.api` itself (not a copy), so that whatever patches or imports one sees the other."""

import sys

from percs.predict import api

sys.modules[__name__] = api
