"""The human in the loop: asking about hosts the policy neither allows nor denies."""
