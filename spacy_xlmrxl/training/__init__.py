"""Training data: readers and converters by format (`uner`, `sib200`, `squad`, `text`), the corpus
readers registered for ``spacy train`` (`corpus`), DocBin files (`docbin`), the assets' checksums
(`data_check`) and the CPU training callback (`cpu_memory`)."""
