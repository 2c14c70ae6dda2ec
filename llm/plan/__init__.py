"""`llm plan`: time, memory and money of a training or fine-tuning run per hardware choice and
method, predicted from compiled programs (or an analytic model) and measured speeds."""
