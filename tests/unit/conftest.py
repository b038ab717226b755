import sys
from pathlib import Path

# Unit tests import the package from source; integration and e2e tests run the built layer.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "extension"))
