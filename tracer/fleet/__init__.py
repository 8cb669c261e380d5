"""Fleets: the images of a batch that stand on the same lowest layers, minimized onto one
shared base layer (`tracer batch --share-base`).

- descriptor.py: the base descriptor (a fleet's base as JSON: its layers, paths, digest,
  which job needs which path), written under OUT/fleets/ and read back by jobs, by
  `--pin-base` and by `tracer why`;
- plan.py: grouping jobs by their input layers, the union of what they keep, keeping a
  pinned base, and what a job added or removed did to the base;
- runner.py: the batch that coordinates it (every job analysed, then the bases written
  once, then every job written and verified on its base), each job in its own process;
- summary.py: a fleet's numbers for summary.json and the table.

The image side (the seed index of the lowest layers, placing an image on a base, writing
its layers) is tracer.image.layercache and tracer.image.sharedbase; the job side (a run
stopped after its keep-list and resumed) is tracer.stage.
"""
