"""Pure ``torch.nn`` code: skeleton layouts, shared GCN/TCN units, one file per encoder, CSRE."""
