"""Work arriving at the node: when a study is complete (:mod:`node.workflow.completeness`)."""

from node.workflow.completeness import Assembler, Decision, Rule, decide

__all__ = ["Assembler", "Decision", "Rule", "decide"]
