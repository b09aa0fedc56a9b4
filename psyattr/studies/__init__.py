"""Studies on trained models: what their explanations show, and how faithful they are.

`registry.STUDIES` lists them (the command line, the demo and the report go through it); `inputs.StudyInputs`
holds what a study works on (models with their runs and framings, the faces they held out, framed photos);
each study returns a typed result (`summary.StudyResult`) whose `to_summary()` becomes its `summary.json`.
"""

from psyattr.studies.registry import STUDIES, Study, get_study

__all__ = ["STUDIES", "Study", "get_study"]
