"""Report corpora, the rule-based CheXpert labeler and its validation against IU MeSH terms."""
