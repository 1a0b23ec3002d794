"""The operator's side of lmeraser: clustering, the membership ledger, federated training,
revocation and the model store."""
