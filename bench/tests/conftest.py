import os
import sys

# The harness modules live in bench/ (not a package).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
