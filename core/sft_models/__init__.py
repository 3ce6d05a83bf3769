"""The SFTJob API models (spec, status, algorithms, the children's names): what the operator
reconciles and the client submits and reads. Imports only the core."""
