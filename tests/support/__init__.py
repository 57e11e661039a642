"""What the tests share: fakes of spfmilter's collaborators, and the real
mail programs, consumers and machines the integration tests run."""
