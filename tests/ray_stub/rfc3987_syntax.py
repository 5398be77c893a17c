"""Stands in for rfc3987_syntax in the processes of the tests' Ray instance (see the
``ray_cluster`` fixture in conftest.py): importing the real one builds its parsers and takes
3 to 6 s of CPU in every Ray process (jsonschema imports it when present; the notebooks extra
installs it), which on 2 busy cores outlasts the raylet's fixed 15 s wait for its dashboard
agent (ray-project/ray#65983). jsonschema does without it: it then skips the "iri" formats."""

raise ImportError("rfc3987_syntax is left out of the tests' Ray processes")
