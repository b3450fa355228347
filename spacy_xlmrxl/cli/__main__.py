"""``python -m spacy_xlmrxl.cli``: the ``spacy-xlmrxl`` command line."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
