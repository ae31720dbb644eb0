"""A fleet of parent instances on AWS as one CloudFormation stack.

``python -m parent fleet template|deploy|rollout|status|teardown|k8s``: the template
(:mod:`.template`), the stack's lifecycle (:mod:`.lifecycle`), rolling releases that move the
KMS key policy with the PCRs (:mod:`.rollout`) and an EKS manifest set (:mod:`.k8s`).
"""
