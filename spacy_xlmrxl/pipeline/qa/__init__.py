"""``xlmrxl_qa``: the component (`component`), its features and decoding (`features`), the Doc
extensions and annotation it shares with the readers (`annotation`) and SQuAD scoring (`scoring`)."""
