"""After a run: why a path is kept or missing, and what keeps a minimized image working.

- `runfiles`: the keep-list and path index written next to a run's report;
- `why`: "why is this file kept / not kept?", from those files;
- `diagnose`: a traced run of a minimized image turned into the lines to add;
- `replay`: `tracer diagnose`, replaying the smoke test or one production command on the
  original and the minimized image.
"""
