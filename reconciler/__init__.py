"""The reconciler: proves the books balance, finds every break, tells a person.

- ``snapshot``: the books as of a cut (database time and block), read once;
- ``matches``: every mint matched to its intent by intent id; the breaks;
- ``breaks``: break classes, priorities, aging and the ``breaks`` table;
- ``runs``: the cut, the verdict and the stored, byte-stable run document;
- ``alerts`` and ``channels``: alert lifecycle, email and signed webhooks;
- ``reports`` and ``page``: ``haven report`` as table, JSON, CSV and HTML;
- ``scheduler`` and ``service``: the daemon component that runs it all.
"""
