"""What a chat means, apart from any wire format: template rendering, output parsing (reasoning,
tool calls), grammars."""
