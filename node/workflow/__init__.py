"""Work arriving at the node: when a study is complete (:mod:`node.workflow.completeness`), and the work items of a
site's task manager the node performs (:mod:`node.workflow.performer`)."""

from node.workflow.completeness import Assembler, Decision, Rule, decide

__all__ = ["Assembler", "Decision", "Rule", "decide"]
