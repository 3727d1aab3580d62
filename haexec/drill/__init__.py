"""`haexec drill`: failure drills on a throwaway local cluster (see haexec/drill/run.py)."""
