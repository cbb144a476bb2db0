// docs/guide.md embeds tests/vm/guide/guide_example.cpp verbatim: keep them equal.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace {

std::string read(const char* path) {
    std::ifstream file(path);
    EXPECT_TRUE(file.good()) << "cannot open " << path;
    std::ostringstream text;
    text << file.rdbuf();
    return text.str();
}

TEST(GuideExample, MatchesTheGuide) {
    const std::string guide = read(ODP_GUIDE_PATH);
    const std::string example = read(ODP_GUIDE_EXAMPLE_PATH);
    ASSERT_FALSE(example.empty());
    EXPECT_NE(guide.find("```cpp\n" + example + "```\n"), std::string::npos)
        << "docs/guide.md no longer contains " ODP_GUIDE_EXAMPLE_PATH
           " verbatim in a ```cpp block: copy the file into the guide";
}

}  // namespace
