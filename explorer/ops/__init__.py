"""Operations: the speed bench, the load test, the Hugging Face Space."""
