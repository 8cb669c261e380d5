"""The profile: one YAML file per application, format version 1 (docs/profile.md).

- `model`: the profile as typed, validated data (all the rest of tracer reads);
- `document`: the file read within its budget and composed as bounded YAML;
- `checker`: typed values from YAML nodes, every problem with its file and line;
- `sections`: which keys each section accepts and what their values must be;
- `load`: `load_profile`, with the command line's overrides applied;
- `schema`: the JSON Schema for editors; `edit`: suggested lines placed in the
  operator's own file; `starter`: `tracer init`, a first profile from an image.
"""
