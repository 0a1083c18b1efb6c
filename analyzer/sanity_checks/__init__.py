"""The sanity-checks room: ``glam sanity`` (issue 18), evidence that the attribution maps explain
the model — model randomization (``randomize``), similarity measures (``similarity``),
deletion / insertion faithfulness (``faithfulness``), indicators (``indicators``) and the
workflow writing them to an archive (``workflow``, ``runner``). Imports ``analyzer.errors``,
the engine, ``analyzer.api``, the archive (its ``sanity`` group), the report (the sanity
figure) and ``importers``; never the gate, the runs workflows or the CLI.
The public function is ``analyzer.sanity(...)`` (:func:`analyzer.sanity_checks.workflow.sanity`).
"""
