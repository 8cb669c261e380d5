"""Analysis: from the evidence of a run and the ELF closure to the keep-list.

- `evidence`: what each use of a path in the traced run means for the image (read or
  exec keeps the file, stat keeps the entry, create-in keeps the parent, ...);
- `policy`: what is kept although no loader rule or trace shows it;
- `packages`: the files `keep.packages` names, from the image's package database;
- `keeplist`: the merge, excludes and closure (symlinks, parents, hardlinks), with a
  reason for every kept path.
The package granularity (whole units on top of the file-level keep-list) is tracer.units.
"""
