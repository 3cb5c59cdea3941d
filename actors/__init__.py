"""actors/: the roles as plain classes, no Ray: Generator (hf) and build_generator, VLLMGenerator (the only
module that imports vLLM), Scorer and build_scorer (the one reward path). Imports learner/ math and common/."""
