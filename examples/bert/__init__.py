"""GLUE BERT example."""
