"""Public-domain passages for the input-grounded prompt set (bench/prompts.py make_grounded_prompts).

Every text here was published before 1900 and is in the public domain: the opening paragraphs of novels
by Jane Austen (1813), Mary Shelley (1818), Herman Melville (1851), Charles Dickens (1859), Lewis
Carroll (1865) and Arthur Conan Doyle (1891), Abraham Lincoln's Gettysburg Address (1863) and the
preamble of the United States Declaration of Independence (1776).
"""

from __future__ import annotations

PASSAGES: tuple[tuple[str, str], ...] = (
    ("Jane Austen, Pride and Prejudice (1813)",
     "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
     "want of a wife. However little known the feelings or views of such a man may be on his first entering "
     "a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
     "considered the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" said "
     "his lady to him one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied "
     "that he had not. \"But it is,\" returned she; \"for Mrs. Long has just been here, and she told me all "
     "about it.\" Mr. Bennet made no answer. \"Do you not want to know who has taken it?\" cried his wife "
     "impatiently. \"You want to tell me, and I have no objection to hearing it.\" This was invitation "
     "enough. \"Why, my dear, you must know, Mrs. Long says that Netherfield is taken by a young man of large "
     "fortune from the north of England; that he came down on Monday in a chaise and four to see the place, "
     "and was so much delighted with it, that he agreed with Mr. Morris immediately; that he is to take "
     "possession before Michaelmas, and some of his servants are to be in the house by the end of next "
     "week.\""),
    ("Herman Melville, Moby-Dick (1851)",
     "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
     "and nothing particular to interest me on shore, I thought I would sail about a little and see the "
     "watery part of the world. It is a way I have of driving off the spleen and regulating the circulation. "
     "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my "
     "soul; whenever I find myself involuntarily pausing before coffin warehouses, and bringing up the rear "
     "of every funeral I meet; and especially whenever my hypos get such an upper hand of me, that it "
     "requires a strong moral principle to prevent me from deliberately stepping into the street, and "
     "methodically knocking people's hats off, then, I account it high time to get to sea as soon as I can. "
     "This is my substitute for pistol and ball. With a philosophical flourish Cato throws himself upon his "
     "sword; I quietly take to the ship. There is nothing surprising in this. If they but knew it, almost "
     "all men in their degree, some time or other, cherish very nearly the same feelings towards the ocean "
     "with me."),
    ("Charles Dickens, A Tale of Two Cities (1859)",
     "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
     "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
     "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
     "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
     "direct the other way. In short, the period was so far like the present period, that some of its "
     "noisiest authorities insisted on its being received, for good or for evil, in the superlative degree "
     "of comparison only. There were a king with a large jaw and a queen with a plain face, on the throne of "
     "England; there were a king with a large jaw and a queen with a fair face, on the throne of France. In "
     "both countries it was clearer than crystal to the lords of the State preserves of loaves and fishes, "
     "that things in general were settled for ever."),
    ("Lewis Carroll, Alice's Adventures in Wonderland (1865)",
     "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to "
     "do: once or twice she had peeped into the book her sister was reading, but it had no pictures or "
     "conversations in it, \"and what is the use of a book,\" thought Alice, \"without pictures or "
     "conversations?\" So she was considering in her own mind (as well as she could, for the hot day made "
     "her feel very sleepy and stupid), whether the pleasure of making a daisy-chain would be worth the "
     "trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran close "
     "by her. There was nothing so very remarkable in that; nor did Alice think it so very much out of the "
     "way to hear the Rabbit say to itself, \"Oh dear! Oh dear! I shall be late!\" But when the Rabbit "
     "actually took a watch out of its waistcoat-pocket, and looked at it, and then hurried on, Alice "
     "started to her feet, for it flashed across her mind that she had never before seen a rabbit with "
     "either a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran across "
     "the field after it."),
    ("Abraham Lincoln, Gettysburg Address (1863)",
     "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
     "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a "
     "great civil war, testing whether that nation, or any nation so conceived and so dedicated, can long "
     "endure. We are met on a great battle-field of that war. We have come to dedicate a portion of that "
     "field, as a final resting place for those who here gave their lives that that nation might live. It "
     "is altogether fitting and proper that we should do this. But, in a larger sense, we can not dedicate, "
     "we can not consecrate, we can not hallow this ground. The brave men, living and dead, who struggled "
     "here, have consecrated it, far above our poor power to add or detract. The world will little note, "
     "nor long remember what we say here, but it can never forget what they did here. It is for us the "
     "living, rather, to be dedicated here to the unfinished work which they who fought here have thus far "
     "so nobly advanced."),
    ("Declaration of Independence, preamble (1776)",
     "When in the Course of human events, it becomes necessary for one people to dissolve the political "
     "bands which have connected them with another, and to assume among the powers of the earth, the "
     "separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent "
     "respect to the opinions of mankind requires that they should declare the causes which impel them to "
     "the separation. We hold these truths to be self-evident, that all men are created equal, that they "
     "are endowed by their Creator with certain unalienable Rights, that among these are Life, Liberty and "
     "the pursuit of Happiness. That to secure these rights, Governments are instituted among Men, deriving "
     "their just powers from the consent of the governed. That whenever any Form of Government becomes "
     "destructive of these ends, it is the Right of the People to alter or to abolish it, and to institute "
     "new Government, laying its foundation on such principles and organizing its powers in such form, as "
     "to them shall seem most likely to effect their Safety and Happiness."),
    ("Mary Shelley, Frankenstein (1818), Letter 1",
     "You will rejoice to hear that no disaster has accompanied the commencement of an enterprise which you "
     "have regarded with such evil forebodings. I arrived here yesterday, and my first task is to assure my "
     "dear sister of my welfare and increasing confidence in the success of my undertaking. I am already far "
     "north of London, and as I walk in the streets of Petersburgh, I feel a cold northern breeze play upon "
     "my cheeks, which braces my nerves and fills me with delight. Do you understand this feeling? This "
     "breeze, which has travelled from the regions towards which I am advancing, gives me a foretaste of "
     "those icy climes. Inspirited by this wind of promise, my daydreams become more fervent and vivid. I "
     "try in vain to be persuaded that the pole is the seat of frost and desolation; it ever presents itself "
     "to my imagination as the region of beauty and delight."),
    ("Arthur Conan Doyle, A Scandal in Bohemia (1891)",
     "To Sherlock Holmes she is always the woman. I have seldom heard him mention her under any other name. "
     "In his eyes she eclipses and predominates the whole of her sex. It was not that he felt any emotion "
     "akin to love for Irene Adler. All emotions, and that one particularly, were abhorrent to his cold, "
     "precise but admirably balanced mind. He was, I take it, the most perfect reasoning and observing "
     "machine that the world has seen, but as a lover he would have placed himself in a false position. He "
     "never spoke of the softer passions, save with a gibe and a sneer. They were admirable things for the "
     "observer, excellent for drawing the veil from men's motives and actions. But for the trained reasoner "
     "to admit such intrusions into his own delicate and finely adjusted temperament was to introduce a "
     "distracting factor which might throw a doubt upon all his mental results."),
)

# What the model is asked to do with a passage ({passage} is where it goes): rewrites whose answer reuses
# the passage's words, as edits, corrections and reformatting of a supplied text do. (Asked to summarize
# instead, SmolLM2-135M mostly comments on the passage in its own words: 13% of n-gram drafts accepted
# against 33-47% for these, measured on four passages.)
TASKS: tuple[str, ...] = (
    "Here is a passage:\n\n{passage}\n\nRewrite this passage in simpler words.",
    "Copy the following passage and fix any spelling mistakes:\n\n{passage}",
    "{passage}\n\nRewrite the passage above in modern English, sentence by sentence.",
    "Text:\n{passage}\n\nRepeat the text above with every sentence on its own line.",
)
